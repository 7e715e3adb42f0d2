"""Planner presets: versioned JSON files in the top-level ``plans/`` folder.

A preset fixes the memory target, network width and depth limits, diffusion defaults and
training defaults. ``--preset NAME`` picks ``plans/NAME.json``; ``--preset path/to/file.json`` reads
any file. A non-editable install finds the presets under ``<prefix>/share/ortho_nnd/plans``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REQUIRED_PRESET_KEYS = (
    "preset_name", "preset_version", "gpu_memory_target_gb", "base_features", "max_features", "max_stages",
    "min_feature_map_size", "n_blocks_first_stage", "n_blocks_per_stage", "n_blocks_per_stage_decoder",
    "time_embed_dim_factor", "attention_max_tokens", "attention_heads", "max_patch_size",
    "min_in_plane_spacing_mm", "min_batch_size", "max_batch_fraction_of_dataset", "diffusion", "training",
)
REQUIRED_DIFFUSION_KEYS = ("num_timesteps", "schedule", "prediction", "feature_timesteps", "segmentation_timestep")


def preset_folders() -> list[Path]:
    """Return the folders searched for presets, in order."""
    return [Path(__file__).resolve().parents[2] / "plans", Path(sys.prefix) / "share" / "ortho_nnd" / "plans"]


def available_presets() -> list[str]:
    names = set()
    for folder in preset_folders():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json"))
    return sorted(names)


def load_preset(name_or_path: str = "default") -> dict:
    """Load and validate a preset by name or path; raise ValueError/FileNotFoundError with the fix."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        path = candidate
    else:
        path = next((folder / f"{name_or_path}.json" for folder in preset_folders() if (folder / f"{name_or_path}.json").is_file()), None)
        if path is None:
            raise FileNotFoundError(f"Planner preset {name_or_path!r} not found. Available presets: {available_presets()}, or give a path to a JSON file.")

    with open(path, encoding="utf-8") as handle:
        try:
            preset = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"Preset {path} is not valid JSON: {error}.") from error
    validate_preset(preset, str(path))
    return preset


def validate_preset(preset: dict, source: str) -> None:
    """Raise ValueError naming the key when a preset lacks a key or contains an invalid value."""
    missing = [key for key in REQUIRED_PRESET_KEYS if key not in preset]
    if missing:
        raise ValueError(f"Preset {source} lacks the keys {missing}. Copy plans/default.json and edit it.")
    missing = [key for key in REQUIRED_DIFFUSION_KEYS if key not in preset["diffusion"]]
    if missing:
        raise ValueError(f"Preset {source}: 'diffusion' lacks the keys {missing}.")

    if not preset["gpu_memory_target_gb"] > 0:
        raise ValueError(f"Preset {source}: gpu_memory_target_gb must be positive, got {preset['gpu_memory_target_gb']}.")
    for key in ("base_features", "max_features", "max_stages", "min_feature_map_size", "attention_heads", "min_batch_size"):
        value = preset[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Preset {source}: {key} must be a positive integer, got {value!r}.")
    if preset["max_features"] < preset["base_features"]:
        raise ValueError(f"Preset {source}: max_features ({preset['max_features']}) is below base_features ({preset['base_features']}).")
    if len(preset["max_patch_size"]) != 3:
        raise ValueError(f"Preset {source}: max_patch_size must have three entries (through-plane, in-plane, in-plane).")
    if preset["diffusion"]["schedule"] not in ("cosine", "linear"):
        raise ValueError(f"Preset {source}: diffusion schedule must be 'cosine' or 'linear', got {preset['diffusion']['schedule']!r}.")
    if preset["diffusion"]["prediction"] not in ("epsilon", "v"):
        raise ValueError(f"Preset {source}: diffusion prediction must be 'epsilon' or 'v', got {preset['diffusion']['prediction']!r}.")
    timesteps = preset["diffusion"]["num_timesteps"]
    for t in list(preset["diffusion"]["feature_timesteps"]) + [preset["diffusion"]["segmentation_timestep"]]:
        if not 0 <= t < timesteps:
            raise ValueError(f"Preset {source}: timestep {t} is outside [0, {timesteps}).")
