"""Run ``ortho_train`` with the start and end time of every training step recorded in a JSON file.

    python benchmarks/ortho_train_timed.py TIMING.json DATASET seg all --view sagittal --iterations 40 ...

Everything after the JSON path goes to ``ortho_train`` unchanged. ``BaseTrainer.train_step`` is
wrapped before the command runs, so the record covers pretraining and fine-tuning alike. The JSON
has ``steps`` (rows ``[0, start, end]`` in seconds of ``time.perf_counter``, one pseudo-epoch so
the harness treats the rows as nnU-Net's), ``torch_threads`` and the exit code. The nnU-Net side
records the same rows from its own ``train_step`` (see ``nnunet_bridge.TRAINER_SOURCE``).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit("usage: ortho_train_timed.py TIMING.json ORTHO_TRAIN_ARGUMENTS...")
    timing_file = Path(argv[0])

    import torch

    from ortho_nnd.cli import train as train_cli
    from ortho_nnd.training import base_trainer

    steps: list[list[float]] = []
    original_train_step = base_trainer.BaseTrainer.train_step

    def timed_train_step(self, batch):
        start = time.perf_counter()
        result = original_train_step(self, batch)
        steps.append([0, start, time.perf_counter()])
        return result

    base_trainer.BaseTrainer.train_step = timed_train_step
    code = train_cli.main(argv[1:])
    timing_file.write_text(
        json.dumps({"steps": steps, "torch_threads": torch.get_num_threads(), "exit_code": code}), encoding="utf-8"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
