"""nnU-Net v2 side of the benchmark: its virtual environment, plans edits, trainer and commands.

nnU-Net is never a dependency of ortho_nnd. The harness installs ``nnunetv2`` from PyPI into a
separate virtual environment and runs its console scripts there as subprocesses, with
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` under the benchmark's work folder.

Two edits make the training comparison fair:

- ``match_nnunet_plans`` sets the 3d_fullres patch size, batch size and U-Net topology (stages,
  features, kernels, strides, convolutions per stage) to those of the ortho_nnd plans, with the
  axes mapped through both tools' axis orders (``ortho_to_nnunet_axes``).
- ``TRAINER_SOURCE`` is an nnU-Net trainer subclass that trains for a fixed number of iterations.
  It records the start and end time of every ``train_step`` and the parameter count in a JSON
  file. It skips nnU-Net's final validation, because the harness predicts the test cases itself.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

# nnU-Net release the numbers in documentation/benchmarks.md were measured with.
DEFAULT_NNUNET_VERSION = "2.8.1"
CONFIGURATION = "3d_fullres"
PLANS_NAME = "nnUNetPlans"
TRAINER_NAME = "nnUNetTrainer_OrthoBenchmark"
TRAINER_MODULE_FILE = f"{TRAINER_NAME}.py"

# Environment variables that the benchmark trainer reads (set per run by the harness).
ITERATIONS_VARIABLE = "ORTHO_BENCHMARK_ITERATIONS"
ITERATIONS_PER_EPOCH_VARIABLE = "ORTHO_BENCHMARK_ITERATIONS_PER_EPOCH"
TIMING_FILE_VARIABLE = "ORTHO_BENCHMARK_TIMING_JSON"

# Trainer written into the venv's nnunetv2 package, where nnU-Net's recursive trainer lookup finds
# it. It reads its settings from environment variables so one class serves every run.
TRAINER_SOURCE = '''"""Benchmark trainer written by ortho_nnd's benchmarks/nnunet_bridge.py: fixed iteration count, step timing."""
import json
import math
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_OrthoBenchmark(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        total = int(os.environ["ORTHO_BENCHMARK_ITERATIONS"])
        per_epoch = int(os.environ.get("ORTHO_BENCHMARK_ITERATIONS_PER_EPOCH", total))
        self.num_iterations_per_epoch = per_epoch
        self.num_epochs = int(math.ceil(total / per_epoch))
        # One validation batch per epoch keeps nnU-Net's epoch bookkeeping (EMA Dice) working.
        self.num_val_iterations_per_epoch = 1
        self.save_every = self.num_epochs + 1
        self.benchmark_steps = []

    def train_step(self, batch):
        start = time.perf_counter()
        result = super().train_step(batch)
        self.benchmark_steps.append([self.current_epoch, start, time.perf_counter()])
        return result

    def on_train_end(self):
        super().on_train_end()
        network = self.network.module if hasattr(self.network, "module") else self.network
        record = {
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "patch_size": [int(v) for v in self.configuration_manager.patch_size],
            "batch_size": int(self.batch_size),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "steps": self.benchmark_steps,
        }
        with open(os.environ["ORTHO_BENCHMARK_TIMING_JSON"], "w", encoding="utf-8") as handle:
            json.dump(record, handle)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Benchmark trainer: final validation skipped; the harness predicts the test cases.")
'''


class NnUNetUnavailableError(RuntimeError):
    """Raised when the nnU-Net virtual environment cannot be created or used."""


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def venv_script(venv: Path, name: str) -> Path:
    return Path(venv) / "bin" / name


def installed_nnunet_version(venv: Path) -> str | None:
    """Return the nnunetv2 version installed in ``venv``, or None when there is none."""
    python = venv_python(venv)
    if not python.is_file():
        return None
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"],
        capture_output=True, text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def torch_requirement() -> str:
    """Return ``torch==X.Y.Z`` for the torch release of this interpreter (without a local build tag)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def ensure_nnunet_venv(venv: Path, version: str, log_file: Path) -> Path:
    """Create ``venv`` with torch and ``nnunetv2==version`` unless it already has that version; return its python.

    torch is pinned to the release ortho_nnd runs with, so both tools use the same kernels. pip output
    goes to ``log_file``.
    """
    venv = Path(venv)
    current = installed_nnunet_version(venv)
    if current == version:
        logger.info("Using nnunetv2 %s in %s.", current, venv)
        return venv_python(venv)

    logger.info("Installing nnunetv2 %s into %s (a few minutes; pip output in %s).", version, venv, log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log:
        steps = []
        if not venv_python(venv).is_file():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv_python(venv)), "-m", "pip", "install"]
        steps.append(pip + [torch_requirement()])
        steps.append(pip + [f"nnunetv2=={version}"])
        for command in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise NnUNetUnavailableError(f"Command failed: {' '.join(command)}. See {log_file}.")

    if installed_nnunet_version(venv) != version:
        raise NnUNetUnavailableError(f"nnunetv2 {version} is still not importable in {venv}. See {log_file}.")
    return venv_python(venv)


def install_benchmark_trainer(venv: Path) -> Path:
    """Write the benchmark trainer into the venv's nnunetv2 trainer package; return its path."""
    python = venv_python(venv)
    result = subprocess.run(
        [str(python), "-c", "import nnunetv2.training.nnUNetTrainer as t, os; print(os.path.dirname(t.__file__))"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise NnUNetUnavailableError(f"Cannot locate nnunetv2 in {venv}: {result.stderr.strip()}")
    folder = Path(result.stdout.strip()) / "variants" / "ortho_benchmark"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").touch()
    target = folder / TRAINER_MODULE_FILE
    target.write_text(TRAINER_SOURCE, encoding="utf-8")
    return target


def nnunet_environment(work_folder: Path, threads: int, data_workers: int) -> dict[str, str]:
    """Return the nnU-Net environment variables for runs under ``work_folder``."""
    return {
        "nnUNet_raw": str(Path(work_folder) / "nnunet_raw"),
        "nnUNet_preprocessed": str(Path(work_folder) / "nnunet_preprocessed"),
        "nnUNet_results": str(Path(work_folder) / "nnunet_results"),
        "nnUNet_n_proc_DA": str(data_workers),
        # torch.compile is off on CPU in nnU-Net anyway; switching it off keeps GPU runs comparable
        # to ortho_nnd, which compiles only with --compile.
        "nnUNet_compile": "false",
        "OMP_NUM_THREADS": str(threads),
    }


# ---------------------------------------------------------------------- plans


def ortho_to_nnunet_axes(ortho_permutation: Sequence[int], transpose_forward: Sequence[int]) -> list[int]:
    """Return, for each nnU-Net array axis, the ortho_nnd canonical axis that covers the same image axis.

    ortho_nnd canonical axis ``i`` is numpy axis ``ortho_permutation[i]`` of the SimpleITK array, and
    nnU-Net's axis ``j`` is numpy axis ``transpose_forward[j]``.
    """
    permutation = [int(v) for v in ortho_permutation]
    transpose = [int(v) for v in transpose_forward]
    if sorted(permutation) != [0, 1, 2] or sorted(transpose) != [0, 1, 2]:
        raise ValueError(f"Invalid axis orders: ortho permutation {permutation}, nnU-Net transpose_forward {transpose}.")
    return [permutation.index(numpy_axis) for numpy_axis in transpose]


def _reorder(values: Sequence, axes: Sequence[int]) -> list:
    return [values[axis] for axis in axes]


def match_nnunet_plans(
    plans: dict,
    patch_size: Sequence[int],
    batch_size: int,
    ortho_kwargs: dict,
    axes: Sequence[int],
    configuration: str = CONFIGURATION,
) -> dict:
    """Return a copy of nnU-Net ``plans`` whose ``configuration`` matches an ortho_nnd view plan.

    ``patch_size`` and the kernel sizes and strides in ``ortho_kwargs`` are per ortho_nnd canonical
    axis; ``axes`` (from ``ortho_to_nnunet_axes``) reorders them into nnU-Net's axis order. An
    ortho_nnd encoder stage is a (strided) input convolution followed by ``b`` residual blocks of two
    convolutions, so it becomes ``2 * b + 1`` nnU-Net convolutions, the first of them strided. A
    decoder stage (transposed convolution, concatenation, ``b`` residual blocks) becomes ``2 * b``
    convolutions after nnU-Net's own transposed convolution. Everything else (no residual 1x1x1
    skips, time embedding or attention, nnU-Net's loss and augmentation) stays nnU-Net's own.
    """
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"nnU-Net plans have no configuration {configuration!r}; found {sorted(plans.get('configurations', {}))}.")
    features = [int(v) for v in ortho_kwargs["features_per_stage"]]
    stages = len(features)
    for key in ("kernel_sizes", "strides", "n_blocks_per_stage"):
        if len(ortho_kwargs[key]) != stages:
            raise ValueError(f"ortho_nnd architecture has {stages} stages but {len(ortho_kwargs[key])} entries in {key}.")
    if len(ortho_kwargs["n_blocks_per_stage_decoder"]) != stages - 1:
        raise ValueError(f"ortho_nnd architecture needs {stages - 1} decoder stages, got {ortho_kwargs['n_blocks_per_stage_decoder']}.")

    matched = copy.deepcopy(plans)
    configuration_plans = matched["configurations"][configuration]
    configuration_plans["patch_size"] = _reorder([int(v) for v in patch_size], axes)
    configuration_plans["batch_size"] = int(batch_size)

    arch = configuration_plans["architecture"]["arch_kwargs"]
    arch["n_stages"] = stages
    arch["features_per_stage"] = features
    arch["kernel_sizes"] = [_reorder([int(v) for v in kernel], axes) for kernel in ortho_kwargs["kernel_sizes"]]
    arch["strides"] = [_reorder([int(v) for v in stride], axes) for stride in ortho_kwargs["strides"]]
    arch["n_conv_per_stage"] = [2 * int(b) + 1 for b in ortho_kwargs["n_blocks_per_stage"]]
    arch["n_conv_per_stage_decoder"] = [2 * int(b) for b in ortho_kwargs["n_blocks_per_stage_decoder"]]
    return matched


def edit_plans_file(plans_file: Path, **kwargs) -> dict:
    """Apply ``match_nnunet_plans`` to ``plans_file`` in place; return the new plans."""
    plans = json.loads(Path(plans_file).read_text(encoding="utf-8"))
    matched = match_nnunet_plans(plans, **kwargs)
    Path(plans_file).write_text(json.dumps(matched, indent=2), encoding="utf-8")
    return matched


# ---------------------------------------------------------------------- commands


def plan_and_preprocess_command(venv: Path, dataset_id: int, processes: int) -> list[str]:
    return [
        str(venv_script(venv, "nnUNetv2_plan_and_preprocess")), "-d", str(dataset_id),
        "-c", CONFIGURATION, "-np", str(processes), "-npfp", str(processes),
    ]


def preprocess_command(venv: Path, dataset_id: int, processes: int) -> list[str]:
    return [str(venv_script(venv, "nnUNetv2_preprocess")), "-d", str(dataset_id), "-c", CONFIGURATION, "-np", str(processes)]


def train_command(venv: Path, dataset_id: int, device: str) -> list[str]:
    return [str(venv_script(venv, "nnUNetv2_train")), str(dataset_id), CONFIGURATION, "all", "-tr", TRAINER_NAME, "-device", device]


def predict_command(venv: Path, dataset_id: int, input_folder: Path, output_folder: Path, processes: int, tta: bool) -> list[str]:
    command = [
        str(venv_script(venv, "nnUNetv2_predict")), "-i", str(input_folder), "-o", str(output_folder),
        "-d", str(dataset_id), "-c", CONFIGURATION, "-tr", TRAINER_NAME, "-f", "all",
        "-device", "cpu", "-npp", str(processes), "-nps", str(processes), "--disable_progress_bar",
    ]
    if not tta:
        command.append("--disable_tta")
    return command


def training_environment(iterations: int, iterations_per_epoch: int, timing_file: Path) -> dict[str, str]:
    """Return the variables the benchmark trainer reads."""
    if iterations < 1 or iterations_per_epoch < 1:
        raise ValueError(f"Invalid iteration counts {iterations} / {iterations_per_epoch}: both must be at least 1.")
    return {
        ITERATIONS_VARIABLE: str(iterations),
        ITERATIONS_PER_EPOCH_VARIABLE: str(min(iterations, iterations_per_epoch)),
        TIMING_FILE_VARIABLE: str(timing_file),
    }


def extend_environment(*overrides: dict[str, str]) -> dict[str, str]:
    environment = dict(os.environ)
    for override in overrides:
        environment.update(override)
    return environment
