"""UNet topology from patch size and spacing: strides, kernel sizes and stage count.

Rules (the same reasoning as nnU-Net's planner, written out here):

- An axis is downsampled at a stage only while its current spacing is at most
  ``POOLING_SPACING_RATIO`` times the finest current spacing and its feature map stays at least
  ``min_feature_map_size`` voxels after halving. Thick-slice axes are therefore not pooled at the
  first stages; they join once the in-plane axes have become as coarse.
- An axis gets kernel size 3 once its current spacing is at most ``KERNEL_SPACING_RATIO`` times
  the finest current spacing, else 1, so early stages of a 4 mm-slice scan convolve in-plane only.
- The patch size is rounded down to a multiple of the cumulative stride along each axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

POOLING_SPACING_RATIO = 2.0
KERNEL_SPACING_RATIO = 2.0


@dataclass
class Topology:
    """Strides and kernel sizes per stage (stage 0 has stride 1) and the adjusted patch size."""

    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]

    @property
    def num_stages(self) -> int:
        return len(self.strides)


def plan_topology(patch_size: Sequence[int], spacing: Sequence[float], max_stages: int, min_feature_map_size: int) -> Topology:
    """Derive the per-stage strides and kernel sizes for a patch at ``spacing`` (canonical order)."""
    current_spacing = [float(s) for s in spacing]
    current_shape = [int(s) for s in patch_size]
    kernel_active = [False, False, False]

    def kernel_for(spacing_now: list[float]) -> list[int]:
        finest = min(spacing_now)
        for axis in range(3):
            if spacing_now[axis] <= KERNEL_SPACING_RATIO * finest:
                kernel_active[axis] = True
        return [3 if active else 1 for active in kernel_active]

    strides = [[1, 1, 1]]
    kernels = [kernel_for(current_spacing)]
    while len(strides) < max_stages:
        poolable = [axis for axis in range(3) if current_shape[axis] >= 2 * min_feature_map_size]
        if not poolable:
            break
        finest = min(current_spacing[axis] for axis in poolable)
        stride = [
            2 if axis in poolable and current_spacing[axis] <= POOLING_SPACING_RATIO * finest else 1
            for axis in range(3)
        ]
        if stride == [1, 1, 1]:
            break
        current_shape = [s // f for s, f in zip(current_shape, stride)]
        current_spacing = [s * f for s, f in zip(current_spacing, stride)]
        strides.append(stride)
        kernels.append(kernel_for(current_spacing))

    divisors = [1, 1, 1]
    for stride in strides:
        divisors = [d * s for d, s in zip(divisors, stride)]
    adjusted = [max(d, (int(p) // d) * d) for p, d in zip(patch_size, divisors)]
    return Topology(strides=strides, kernel_sizes=kernels, patch_size=adjusted)
