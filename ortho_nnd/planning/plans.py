"""Plans: the per-view configuration that preprocessing, training and prediction carry out.

``plans.json`` stays plain JSON that a user may edit. ``ViewPlans`` checks one view's entry and
gives typed access. ``load_plans`` validates every view before any long run starts, so an edited
file with a typo fails at once with the key and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ortho_nnd.dataset import load_json, save_json
from ortho_nnd.geometry import VIEWS

PLANS_FILE_NAME = "plans.json"
DEFAULT_PLANS_NAME = "orthoPlans"


@dataclass
class ViewPlans:
    """Validated plans of one view."""

    view: str
    data_identifier: str
    target_spacing: list[float]
    median_shape_after_resampling: list[float]
    normalization: str
    resampling: dict
    patch_size: list[int]
    batch_size: int
    mirror_axes: list[int]
    architecture: dict
    diffusion: dict
    training: dict
    memory_estimate_gb: float

    @classmethod
    def from_dict(cls, data: dict, source: str = "plans") -> "ViewPlans":
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"{source}: view plans lack the keys {missing}. Re-run ortho_plan_experiment or restore them.")
        plans = cls(**{name: data[name] for name in names})
        plans.validate(source)
        return plans

    def validate(self, source: str) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"{source}: invalid view {self.view!r}; expected one of {VIEWS}.")
        for key in ("target_spacing", "patch_size"):
            value = getattr(self, key)
            numeric = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if not numeric or len(value) != 3 or any(v <= 0 for v in value):
                raise ValueError(f"{source}: {self.view}.{key} must be three positive numbers, got {value}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"{source}: {self.view}.batch_size must be a positive integer, got {self.batch_size!r}.")
        if not all(isinstance(v, int) for v in self.patch_size):
            raise ValueError(f"{source}: {self.view}.patch_size must be three integers, got {self.patch_size}.")
        if not isinstance(self.mirror_axes, list) or any(axis not in (0, 1, 2) for axis in self.mirror_axes):
            raise ValueError(f"{source}: {self.view}.mirror_axes must contain only 0, 1 or 2, got {self.mirror_axes}.")
        if "network_class" not in self.architecture or "kwargs" not in self.architecture:
            raise ValueError(f"{source}: {self.view}.architecture needs 'network_class' and 'kwargs'.")
        strides = self.architecture["kwargs"].get("strides", [])
        divisor = [1, 1, 1]
        for stride in strides:
            divisor = [d * s for d, s in zip(divisor, stride)]
        if any(p % d for p, d in zip(self.patch_size, divisor)):
            raise ValueError(
                f"{source}: {self.view}.patch_size {self.patch_size} is not divisible by the cumulative strides {divisor}; "
                f"use multiples of {divisor}."
            )
        timesteps = self.diffusion.get("num_timesteps", 0)
        for t in list(self.diffusion.get("feature_timesteps", [])) + [self.diffusion.get("segmentation_timestep", 0)]:
            if not 0 <= t < timesteps:
                raise ValueError(f"{source}: {self.view}.diffusion timestep {t} is outside [0, {timesteps}).")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def plans_path(preprocessed_dataset_folder: Path) -> Path:
    return Path(preprocessed_dataset_folder) / PLANS_FILE_NAME


def load_plans(path: Path) -> dict:
    """Load plans.json and validate every view; raise FileNotFoundError with the command to create it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Plans not found: {path}. Run ortho_plan_and_preprocess (or ortho_plan_experiment) for this dataset first.")
    plans = load_json(path)
    if "views" not in plans or not plans["views"]:
        raise ValueError(f"{path} has no 'views' entry; re-run ortho_plan_experiment.")
    for view, view_plans in plans["views"].items():
        ViewPlans.from_dict(view_plans, f"{path} ({view})")
    return plans


def view_plans(plans: dict, view: str, source: str = "plans") -> dict:
    """Return one view's plans; raise ValueError listing the planned views when ``view`` is absent."""
    if view not in plans["views"]:
        raise ValueError(f"No plans for view {view!r} in {source}; planned views: {sorted(plans['views'])}.")
    return plans["views"][view]


def save_plans(plans: dict, path: Path) -> None:
    save_json(plans, path)
