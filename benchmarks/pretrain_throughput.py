"""Measure pretraining throughput: iterations/s, peak memory and FLOP utilisation per view.

    python benchmarks/pretrain_throughput.py                       # built-in synthetic plans, CPU (+ CUDA if present)
    python benchmarks/pretrain_throughput.py --plans PATH/plans.json --device cuda --iterations 20

Each measurement runs one pretraining step as ``PretrainTrainer`` does (bf16 autocast on CUDA,
diffusion loss, backward, gradient clipping, AdamW, EMA update) on a random batch that already
sits on the device, so data loading is excluded. Every (view, device) pair runs in its own
subprocess, so the CPU peak resident memory (``ru_maxrss``) belongs to that pair alone.

FLOPs per iteration come from ``torch.utils.flop_counter.FlopCounterMode`` over one full step.
It counts matrix products, convolutions and attention kernels (2 FLOPs per multiply-add). The
FLOPs of normalisation, activations and the optimizer are not counted, so the utilisation is a
lower bound.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

VIEWS = ("sagittal", "coronal", "axial")

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s. Source: the "Performance" tables of
# https://glennklockwood.com/garden/processors/h100 (H100 SXM5, which notes the H200 has the same
# compute with more memory) and https://glennklockwood.com/garden/processors/A100 (from the NVIDIA
# A100 datasheet). Matched against torch.cuda.get_device_name(); other GPUs report no fraction.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100": 989.4,  # SXM5 only; PCIe boards are excluded below.
    "A100": 312.0,
}

# CPU-sized stand-ins for planned views, with the through-plane axis first and shortest as in
# canonical arrays. Real plans (default preset) are far larger, so pass --plans to measure them.
SYNTHETIC_ARCHITECTURE = {
    "network_class": "ortho_nnd.network.diffusion_unet.DiffusionUNet",
    "kwargs": {
        "in_channels": 1,
        "out_channels": 1,
        "features_per_stage": [16, 32, 64, 128],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_blocks_per_stage": [1, 1, 1, 1],
        "n_blocks_per_stage_decoder": [1, 1, 1],
        "attention_stages": [False, False, False, True],
        "attention_heads": 4,
        "time_embed_dim": 64,
        "norm": "instance",
        "dropout": 0.0,
    },
}
SYNTHETIC_PATCH_SIZES = {"sagittal": [16, 96, 96], "coronal": [16, 80, 112], "axial": [16, 112, 96]}
SYNTHETIC_BATCH_SIZE = 2
SYNTHETIC_DIFFUSION = {"num_timesteps": 1000, "schedule": "cosine", "prediction": "epsilon"}


def synthetic_view_plans(view: str) -> dict:
    return {
        "patch_size": SYNTHETIC_PATCH_SIZES[view],
        "batch_size": SYNTHETIC_BATCH_SIZE,
        "architecture": SYNTHETIC_ARCHITECTURE,
        "diffusion": SYNTHETIC_DIFFUSION,
        "training": {"learning_rate": 1e-4, "weight_decay": 0.01, "grad_clip": 1.0, "ema_decay": 0.9999},
    }


def peak_bf16_tflops(device_name: str) -> float | None:
    if "H100" in device_name and "PCIe" in device_name:
        return None
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def measure(view_plans: dict, device_name: str, warmup: int, iterations: int) -> dict:
    """Time ``iterations`` pretraining steps after ``warmup`` untimed ones; return the numbers."""
    from torch.utils.flop_counter import FlopCounterMode

    from ortho_nnd.diffusion import DiffusionSchedule, ExponentialMovingAverage, diffusion_loss
    from ortho_nnd.network import build_network_from_spec
    from ortho_nnd.training.device import autocast_context, resolve_device

    device = resolve_device(device_name)
    torch.manual_seed(0)
    network = build_network_from_spec(view_plans["architecture"]).to(device)
    training = view_plans.get("training", {})
    optimizer = torch.optim.AdamW(network.parameters(), lr=training.get("learning_rate", 1e-4), weight_decay=training.get("weight_decay", 0.01))
    ema = ExponentialMovingAverage(network, decay=training.get("ema_decay", 0.9999))
    schedule = DiffusionSchedule.from_plans(view_plans["diffusion"])
    prediction = view_plans["diffusion"].get("prediction", "epsilon")
    batch = torch.randn(view_plans["batch_size"], 1, *view_plans["patch_size"], device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device):
            loss, _ = diffusion_loss(network, batch, schedule, prediction, generator=generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), training.get("grad_clip", 1.0))
        optimizer.step()
        ema.update(network)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        step()
    flops_per_iteration = flop_counter.get_total_flops()

    for _ in range(warmup):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize()
    seconds = time.perf_counter() - start

    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated()
        hardware = torch.cuda.get_device_name()
        peak = peak_bf16_tflops(hardware)
    else:
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        scale = 1 if sys.platform == "darwin" else 1024
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        peak = None

    iterations_per_second = iterations / seconds
    achieved_tflops = flops_per_iteration * iterations_per_second / 1e12
    return {
        "device": device.type,
        "hardware": hardware,
        "patch_size": view_plans["patch_size"],
        "batch_size": view_plans["batch_size"],
        "iterations_per_second": iterations_per_second,
        "gflop_per_iteration": flops_per_iteration / 1e9,
        "achieved_tflops": achieved_tflops,
        "peak_fraction": achieved_tflops / peak if peak else None,
        "peak_memory_gib": peak_memory / 2**30,
        "memory_kind": "max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def run_isolated(view: str, view_plans: dict, device: str, warmup: int, iterations: int) -> dict:
    """Run ``measure`` in a fresh interpreter so peak memory is per measurement."""
    request = json.dumps({"view_plans": view_plans, "device": device, "warmup": warmup, "iterations": iterations})
    completed = subprocess.run(
        [sys.executable, __file__, "--worker"], input=request, capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if completed.returncode != 0:
        raise RuntimeError(f"Measurement of {view} on {device} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["view"] = view
    return result


def print_table(results: list[dict]) -> None:
    header = f"{'view':<9} {'device':<6} {'patch':<16} {'batch':>5} {'it/s':>8} {'GFLOP/it':>9} {'TFLOP/s':>8} {'of peak':>8} {'peak mem GiB':>12}  hardware"
    print(header)
    print("-" * len(header))
    for r in results:
        fraction = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "n/a"
        patch = "x".join(str(p) for p in r["patch_size"])
        print(
            f"{r['view']:<9} {r['device']:<6} {patch:<16} {r['batch_size']:>5} {r['iterations_per_second']:>8.3f} "
            f"{r['gflop_per_iteration']:>9.1f} {r['achieved_tflops']:>8.3f} {fraction:>8} {r['peak_memory_gib']:>12.2f}  "
            f"{r['hardware']} ({r['memory_kind']})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=Path, help="plans.json to measure (default: built-in synthetic CPU-sized plans).")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS), help="Views to measure (default: all three).")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="cpu, cuda, or all available (default).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed iterations before timing (default: %(default)s).")
    parser.add_argument("--iterations", type=int, default=5, help="Timed iterations (default: %(default)s).")
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        request = json.loads(sys.stdin.read())
        print(json.dumps(measure(request["view_plans"], request["device"], request["warmup"], request["iterations"])))
        return 0

    if args.plans is not None:
        plans = json.loads(args.plans.read_text())
        missing = [view for view in args.views if view not in plans.get("views", {})]
        if missing:
            parser.error(f"{args.plans} has no plans for {missing}; planned views: {sorted(plans.get('views', {}))}.")
        view_plans = {view: plans["views"][view] for view in args.views}
    else:
        view_plans = {view: synthetic_view_plans(view) for view in args.views}

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda requested but torch sees no CUDA device.")
        devices.remove("cuda")

    print(f"pretrain throughput, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"plans: {args.plans or 'built-in synthetic'}, {args.warmup} warm-up + {args.iterations} timed iterations")
    results = [
        run_isolated(view, view_plans[view], device, args.warmup, args.iterations)
        for device in devices
        for view in args.views
    ]
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
