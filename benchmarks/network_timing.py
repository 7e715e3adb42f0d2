"""Time one network's training step and one prediction window, without data loading or trainer code.

    python benchmarks/network_timing.py ortho PLANS.json VIEW NUM_CLASSES OUT.json [--repeats N]
    VENV/bin/python benchmarks/network_timing.py nnunet PLANS.json 3d_fullres NUM_CLASSES OUT.json [--repeats N]

The ``ortho`` mode builds the ortho_nnd segmentation network (diffusion UNet backbone at the
segmentation timestep, deep-supervision heads) from ortho_nnd plans. The ``nnunet`` mode builds
nnU-Net's network from its plans with nnU-Net's own ``get_network_from_plans``, so it runs in the
nnU-Net virtual environment and imports nothing from ortho_nnd. Both time, on the CPU, with the
process's torch threads:

- ``train_step_seconds``: forward, mean of the deep-supervision outputs as a stand-in loss,
  backward and an SGD step, on a random batch of the planned batch and patch size;
- ``window_seconds``: one no-grad forward pass of a single patch, the unit of sliding-window
  prediction (nnU-Net 2.8 predicts one window per call);
- ``window_in_pair_seconds``: half the time of a no-grad pass over two patches, the per-window
  cost when ortho_nnd's sliding window sends two windows per call on the CPU.

The JSON contains the samples after ``WARMUP_REPEATS`` untimed passes, and the parameter count.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# Untimed passes before measuring: the first passes allocate memory and pick convolution kernels.
WARMUP_REPEATS = 2
# Random batches come from a fixed seed so both networks see inputs of the same distribution.
SEED = 0


def build_ortho(plans_file: Path, view: str, num_classes: int):
    from ortho_nnd.network import build_network_from_spec
    from ortho_nnd.network.segmentation import SegmentationNetwork

    view_plans = json.loads(plans_file.read_text(encoding="utf-8"))["views"][view]
    backbone = build_network_from_spec(view_plans["architecture"])
    network = SegmentationNetwork(backbone, num_classes, view_plans["diffusion"]["segmentation_timestep"], deep_supervision=True)
    return network, list(view_plans["patch_size"]), int(view_plans["batch_size"])


def build_nnunet(plans_file: Path, configuration: str, num_classes: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads(plans_file.read_text(encoding="utf-8"))["configurations"][configuration]
    architecture = plans["architecture"]
    network = get_network_from_plans(
        architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
        1, num_classes, allow_init=True, deep_supervision=True,
    )
    return network, list(plans["patch_size"]), int(plans["batch_size"])


def _outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def time_network(network: torch.nn.Module, patch_size: list[int], batch_size: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(SEED)
    batch = torch.randn((batch_size, 1, *patch_size), generator=generator)
    window = torch.randn((1, 1, *patch_size), generator=generator)
    window_pair = torch.randn((2, 1, *patch_size), generator=generator)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)

    network.train()
    train_samples = []
    for index in range(WARMUP_REPEATS + repeats):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = sum(output.float().mean() for output in _outputs(network(batch)))
        loss.backward()
        optimizer.step()
        if index >= WARMUP_REPEATS:
            train_samples.append(time.perf_counter() - start)

    network.eval()
    window_samples, pair_samples = [], []
    with torch.no_grad():
        for index in range(WARMUP_REPEATS + repeats):
            start = time.perf_counter()
            _outputs(network(window))
            middle = time.perf_counter()
            _outputs(network(window_pair))
            if index >= WARMUP_REPEATS:
                window_samples.append(middle - start)
                pair_samples.append((time.perf_counter() - middle) / 2)

    return {
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "patch_size": [int(v) for v in patch_size],
        "batch_size": int(batch_size),
        "torch_threads": torch.get_num_threads(),
        "train_step_seconds": train_samples,
        "window_seconds": window_samples,
        "window_in_pair_seconds": pair_samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=("ortho", "nnunet"))
    parser.add_argument("plans", type=Path, help="ortho_nnd plans.json or nnU-Net nnUNetPlans.json")
    parser.add_argument("selection", help="ortho: the view; nnunet: the configuration (3d_fullres)")
    parser.add_argument("num_classes", type=int, help="number of output classes, background included")
    parser.add_argument("output", type=Path, help="JSON file for the samples")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes of each kind (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")

    torch.manual_seed(SEED)
    builder = build_ortho if args.tool == "ortho" else build_nnunet
    network, patch_size, batch_size = builder(args.plans, args.selection, args.num_classes)
    record = time_network(network, patch_size, batch_size, args.repeats)
    args.output.write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
