"""Run the code blocks of the documentation's worked examples exactly as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path


DOCUMENTATION = Path(__file__).resolve().parents[1] / "documentation"


def _code_blocks(markdown: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.S)


def _run_bash_block(block: str, cwd: Path) -> None:
    """Run each line of a bash block; ``export`` lines set the environment of the later lines."""
    environment = dict(os.environ)
    for line in block.strip().splitlines():
        if line.startswith("export "):
            for assignment in shlex.split(line[len("export "):]):
                key, _, value = assignment.partition("=")
                environment[key] = str(cwd / value) if not Path(value).is_absolute() else value
            continue
        result = subprocess.run(line, shell=True, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line!r} failed:\n{result.stderr[-3000:]}"


def test_dataset_format_worked_example(tmp_path, monkeypatch):
    markdown = DOCUMENTATION / "dataset_format.md"
    python_blocks = _code_blocks(markdown, "python")
    bash_blocks = _code_blocks(markdown, "bash")
    monkeypatch.chdir(tmp_path)

    exec(compile(python_blocks[0], str(markdown), "exec"), {})
    _run_bash_block(bash_blocks[0], tmp_path)

    preprocessed = tmp_path / "ortho_data" / "preprocessed" / "Dataset101_Knee"
    assert (preprocessed / "plans.json").is_file()
    assert (preprocessed / "orthoPlans_sagittal" / "knee0001_seg.npy").is_file()
    assert (preprocessed / "orthoPlans_axial" / "knee0002.npy").is_file()
