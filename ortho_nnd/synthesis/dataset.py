"""Turn real 3D label maps into a raw dataset of synthetic three-view exams.

Each label map yields ``exams_per_map`` exams. An exam starts with a random contrast rendered
on the label map's grid (``contrast``). For every view it then draws an in-plane spacing, a
slice thickness and an obliquity, reslices image and labels (``reslice``), and adds a smooth
bias field, an in-plane point spread and Rician noise. Because labels are known everywhere,
every view is a labelled view. The drawn parameters of every exam are written to
``synthesis_parameters.json`` beside dataset.json.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ortho_nnd.phantom import artifacts
from ortho_nnd.phantom.dataset import write_image_atomically
from ortho_nnd.phantom.grid import VIEWS, Grid, check_view
from ortho_nnd.synthesis.contrast import render_contrast, sample_contrast
from ortho_nnd.synthesis.labels import load_label_names, validate_label_names
from ortho_nnd.synthesis.reslice import acquisition_grid, reslice_image, reslice_label

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
LABEL_MAP_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
PARAMETERS_JSON = "synthesis_parameters.json"
# Images are stored as int16 with this factor applied to the relative intensities.
INTENSITY_SCALE = 1000.0
# Noise standard deviation relative to the brightest class mean (uniform range).
NOISE_SIGMA_RANGE = (0.01, 0.04)
# Standard deviation of the log-bias polynomial coefficients (per 10 cm).
BIAS_STRENGTH = 0.12
# Gaussian in-plane point spread on the output grid, in voxels.
IN_PLANE_PSF_SIGMA_VOXELS = 0.4


def find_label_maps(inputs: list[Path]) -> list[Path]:
    """Expand folders into their label map files and check that every file exists."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.name.endswith(LABEL_MAP_ENDINGS))
            if not found:
                raise FileNotFoundError(f"No label maps ({', '.join(LABEL_MAP_ENDINGS)}) in folder {item}.")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"Label map {item} not found; give label map files or folders that contain them.")
    return paths


def _stem(path: Path) -> str:
    for ending in LABEL_MAP_ENDINGS:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    return path.stem


def synthesize_dataset(
    label_paths: list[Path],
    output_folder: Path,
    dataset_id: int,
    name: str,
    exams_per_map: int = 4,
    seed: int = 0,
    views: tuple[str, ...] = VIEWS,
    label_names: dict[str, int] | None = None,
    in_plane_spacing_range: tuple[float, float] = (0.3, 0.6),
    slice_thickness_range: tuple[float, float] = (3.0, 4.0),
    supersampling: int = 5,
    max_obliquity_degrees: float = 5.0,
) -> Path:
    """Write ``Dataset{id:03d}_{name}`` with synthetic exams of every label map and return its path.

    ``label_names`` maps names to the label values of the maps (default: the knee labels of
    ``labels.DEFAULT_KNEE_LABELS``). Case ids are ``{map file stem}_{exam number:03d}``.
    """
    if not 0 <= int(dataset_id) <= 999:
        raise ValueError(f"Invalid dataset id {dataset_id}: use a number from 0 to 999.")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"Invalid dataset name {name!r}: use letters, digits, '_' or '-'.")
    if exams_per_map < 1:
        raise ValueError(f"exams_per_map must be 1 or more, got {exams_per_map}.")
    if supersampling < 1:
        raise ValueError(f"supersampling must be 1 or more, got {supersampling}.")
    views = tuple(check_view(view) for view in views)
    if not views:
        raise ValueError("Give at least one view to synthesise.")
    names = validate_label_names(label_names) if label_names is not None else load_label_names(None)
    paths = find_label_maps(list(label_paths))
    stems = [_stem(path) for path in paths]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"Several label maps share the file name(s) {duplicates}; rename them so case ids are unique.")

    dataset_folder = Path(output_folder) / f"Dataset{int(dataset_id):03d}_{name}"
    (dataset_folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dataset_folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parameters: dict[str, dict] = {}

    for path, stem in zip(paths, stems):
        label_map = _read_label_map(path, names)
        for exam in tqdm(range(exams_per_map), desc=f"synthesising {stem}", unit="exam"):
            case = f"{stem}_{exam + 1:03d}"
            parameters[case] = _synthesize_exam(
                label_map, names, case, dataset_folder, rng, views,
                in_plane_spacing_range, slice_thickness_range, supersampling, max_obliquity_degrees,
            )
            parameters[case]["source"] = path.name

    dataset_json = {
        "name": name,
        "description": f"Synthetic exams rendered from {len(paths)} label map(s) with random contrasts "
                       "by ortho_synthesize_from_labels.",
        "views": list(views),
        "labelled_views": list(views),
        "labels": names,
        "findings": [],
        "file_ending": FILE_ENDING,
        "numTraining": len(parameters),
        "synthesis": {"seed": int(seed), "exams_per_map": int(exams_per_map), "sources": [p.name for p in paths]},
    }
    _write_json(dataset_folder / "dataset.json", dataset_json)
    _write_json(dataset_folder / PARAMETERS_JSON, parameters)
    logger.info("Wrote %d synthetic exams to %s", len(parameters), dataset_folder)
    return dataset_folder


def _read_label_map(path: Path, names: dict[str, int]) -> sitk.Image:
    label_map = sitk.ReadImage(str(path))
    if label_map.GetDimension() != 3 or label_map.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"Label map {path} must be a 3D scalar image, got {label_map.GetDimension()}D with "
                         f"{label_map.GetNumberOfComponentsPerPixel()} component(s).")
    array = sitk.GetArrayFromImage(label_map)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"Label map {path} contains non-integer values, so it is not a label map; give a map of integer labels."
            )
    present = set(np.unique(array).astype(int).tolist())
    unknown = sorted(present - set(names.values()))
    if unknown:
        raise ValueError(f"Label map {path} contains label value(s) {unknown} that are not in the label names "
                         f"{names}; pass --label_names with a JSON file that names them.")
    return sitk.Cast(label_map, sitk.sitkUInt8)


def _synthesize_exam(
    label_map: sitk.Image, names: dict[str, int], case: str, dataset_folder: Path, rng: np.random.Generator,
    views, in_plane_spacing_range, slice_thickness_range, supersampling: int, max_obliquity_degrees: float,
) -> dict:
    labels = sitk.GetArrayFromImage(label_map)
    spacing_zyx = label_map.GetSpacing()[::-1]
    draw = sample_contrast(rng, names.values())
    intensity = sitk.GetImageFromArray(render_contrast(labels, spacing_zyx, draw, rng))
    intensity.CopyInformation(label_map)
    brightest = max([*draw.label_means.values(), *draw.background_means])

    record = {
        "label_means": {name: draw.label_means[value] for name, value in names.items() if value != 0},
        "label_stds": {name: draw.label_stds[value] for name, value in names.items() if value != 0},
        "background_means": list(draw.background_means),
        "views": {},
    }
    for view in views:
        in_plane = float(rng.uniform(*in_plane_spacing_range))
        thickness = float(rng.uniform(*slice_thickness_range))
        grid = acquisition_grid(label_map, view, in_plane, thickness, rng, max_obliquity_degrees)
        signal = reslice_image(intensity, grid, supersampling).astype(np.float64)
        signal = gaussian_filter(signal, sigma=(0.0, IN_PLANE_PSF_SIGMA_VOXELS, IN_PLANE_PSF_SIGMA_VOXELS))

        bias_coefficients = artifacts.sample_bias_coefficients(rng, BIAS_STRENGTH)
        signal *= artifacts.bias_field(_voxel_centres(grid), grid.center, bias_coefficients)
        noise_sigma = float(rng.uniform(*NOISE_SIGMA_RANGE)) * brightest
        signal = artifacts.add_rician_noise(signal, noise_sigma, rng)

        pixels = np.clip(np.rint(signal * INTENSITY_SCALE), 0, np.iinfo(np.int16).max).astype(np.int16)
        image = grid.apply_to(sitk.GetImageFromArray(pixels))
        label = reslice_label(label_map, grid)
        write_image_atomically(image, dataset_folder / "imagesTr" / f"{case}_{view}{FILE_ENDING}")
        write_image_atomically(label, dataset_folder / "labelsTr" / f"{case}_{view}{FILE_ENDING}")
        record["views"][view] = {
            "size": list(grid.size), "spacing": list(grid.spacing), "noise_sigma": noise_sigma,
            "bias_coefficients": bias_coefficients.tolist(),
        }
    return record


def _voxel_centres(grid: Grid) -> np.ndarray:
    """Return world positions of all voxel centres, shape (z, y, x, 3)."""
    nx, ny, nz = grid.size
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    return grid.index_to_world(index).reshape(nz, ny, nx, 3)


def _write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(f".tmp_{path.name}")
    temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
