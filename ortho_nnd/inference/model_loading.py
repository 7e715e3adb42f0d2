"""Finding trained models in ORTHO_results and loading their fold checkpoints for prediction.

A results dataset folder ``ORTHO_results/DatasetXXX_Name`` contains one task folder per trained
task, each with ``fold_{k}/checkpoint_final.pth`` (and possibly ``checkpoint_best.pth``):
``seg_{view}`` for segmentation of one view and ``cls`` for diagnosis from all views. The
trainer names gated-fusion and linear-probe diagnosis runs ``cls_gated``, ``cls_linear_probe``
and ``cls_linear_probe_gated``. Label-fraction, scratch and other-plans variants such as
``seg_sagittal_lf0.1`` or ``cls__otherPlans`` are used only when their task folder is given
directly with ``-m``.

Checkpoint entries read here (``torch.load(weights_only=True)``):

- all tasks: ``network_weights``, ``architecture`` (a spec for ``build_network_from_spec``).
- segmentation: ``view_plans`` (the view's plans: ``patch_size``, ``mirror_axes`` and the
  preprocessing settings), optional ``labels`` (name to value).
- diagnosis: ``plans`` (the plans.json content, whose ``views`` give each view's plans) or
  ``view_plans`` (view name to plans), optional ``findings`` (names in output order), optional
  ``input_sizes`` (view to the classifier's input size [z, y, x], default: the view's
  ``patch_size``). ``thresholds.json`` next to the checkpoint gives the decision thresholds.

Label and finding names missing from a checkpoint come from the dataset.json of the
preprocessed (then raw) dataset, and otherwise get generic names with a warning.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ortho_nnd import paths
from ortho_nnd.geometry import VIEWS
from ortho_nnd.network.registry import build_network_from_spec
from ortho_nnd.preprocessing.preprocessor import plans_identifier
from ortho_nnd.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_CHOICES = ("checkpoint_final.pth", "checkpoint_best.pth")
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
TASKS = ("seg", "cls")

_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
_FOLD_FOLDER = re.compile(r"^fold_(\d+|all)$")
# seg_{view} or cls (with the trainer's _linear_probe and _gated tags), optionally followed by a
# label-fraction tag, _scratch and a plans name.
_TASK_FOLDER = re.compile(
    r"^(seg_(sagittal|coronal|axial)|cls(_linear_probe)?(_gated)?)(_lf[0-9.]+)?(_scratch)?(__[A-Za-z0-9_\-]+)?$"
)
# Diagnosis folders that -d and a dataset folder consider, in order of preference: the first one
# with a trained fold is used.
CLASSIFICATION_FOLDERS = ("cls", "cls_gated", "cls_linear_probe", "cls_linear_probe_gated")


class ModelNotFoundError(FileNotFoundError):
    """No trained model matches the request; the message lists what is available."""


@dataclass
class FoldModel:
    """One fold's network in evaluation mode and the metadata read from its checkpoint."""

    fold: str
    checkpoint: Path
    network: nn.Module
    view_plans: dict
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass
class SegmentationModel:
    """The fold networks of one ``seg_{view}`` task folder."""

    view: str
    task_folder: Path
    folds: list[FoldModel]
    labels: dict[str, int]

    @property
    def num_classes(self) -> int:
        return self.folds[0].network.num_classes

    def to_json(self) -> dict:
        return {
            "task_folder": str(self.task_folder),
            "folds": [fold.fold for fold in self.folds],
            "checkpoints": [str(fold.checkpoint) for fold in self.folds],
        }


@dataclass
class ClassificationModel:
    """The fold networks of the ``cls`` task folder."""

    task_folder: Path
    folds: list[FoldModel]
    findings: list[str]
    input_patch_size: dict[str, list[int]]

    @property
    def views(self) -> list[str]:
        return list(self.folds[0].network.views)

    @property
    def fusion(self) -> str:
        return self.folds[0].network.fusion

    def to_json(self) -> dict:
        return {
            "task_folder": str(self.task_folder),
            "folds": [fold.fold for fold in self.folds],
            "checkpoints": [str(fold.checkpoint) for fold in self.folds],
            "fusion": self.fusion,
        }


@dataclass
class ModelSet:
    """Every model used by one ``ortho_predict`` run."""

    dataset_folder: Path | None
    segmentation: dict[str, SegmentationModel] = field(default_factory=dict)
    classification: ClassificationModel | None = None

    @property
    def label_names(self) -> dict[str, int]:
        """Return the labels of the first segmentation model (all of them share dataset.json)."""
        for model in self.segmentation.values():
            return model.labels
        return {}


# ---------------------------------------------------------------- locating task folders


def _fold_sort_key(fold: str) -> tuple[int, int]:
    return (0, int(fold)) if fold.isdigit() else (1, 0)


def _trained_folds(task_folder: Path, checkpoint_name: str) -> list[str]:
    """Return the fold names ("0", "1", ..., "all") whose folder contains ``checkpoint_name``."""
    folds = []
    for child in task_folder.iterdir() if task_folder.is_dir() else []:
        match = _FOLD_FOLDER.match(child.name)
        if match and (child / checkpoint_name).is_file():
            folds.append(match.group(1))
    return sorted(folds, key=_fold_sort_key)


def _task_of(task_folder: Path) -> tuple[str, str | None] | None:
    """Return ("seg", view) or ("cls", None) for a task folder name, else None."""
    match = _TASK_FOLDER.match(task_folder.name)
    if not match:
        return None
    if match.group(2):
        return "seg", match.group(2)
    return "cls", None


def list_trained_tasks(dataset_folder: Path, checkpoint_name: str = DEFAULT_CHECKPOINT) -> list[Path]:
    """List the trained ``seg_{view}`` folders and the first trained folder of CLASSIFICATION_FOLDERS."""
    tasks = [
        dataset_folder / f"seg_{view}" for view in VIEWS
        if _trained_folds(dataset_folder / f"seg_{view}", checkpoint_name)
    ]
    trained_cls = [name for name in CLASSIFICATION_FOLDERS if _trained_folds(dataset_folder / name, checkpoint_name)]
    if trained_cls:
        tasks.append(dataset_folder / trained_cls[0])
        if len(trained_cls) > 1:
            logger.info(
                "%s has several diagnosis models %s; using %s (choose another with -m).",
                dataset_folder.name, trained_cls, trained_cls[0],
            )
    return tasks


def list_trained_datasets(checkpoint_name: str = DEFAULT_CHECKPOINT) -> dict[str, list[str]]:
    """Return dataset folder name -> trained task names in ORTHO_results."""
    results = paths.results_folder()
    found = {}
    if results.is_dir():
        for child in sorted(results.iterdir()):
            if child.is_dir() and _DATASET_FOLDER.match(child.name):
                tasks = [task.name for task in list_trained_tasks(child, checkpoint_name)]
                if tasks:
                    found[child.name] = tasks
    return found


def resolve_task_folders(
    dataset: str | None, model_folder: str | None, checkpoint_name: str = DEFAULT_CHECKPOINT
) -> tuple[Path | None, list[Path]]:
    """Return (dataset folder or None, task folders) for ``-d``, ``-m`` or neither.

    Without either, the only dataset in ORTHO_results with a trained task is used. Raises
    ModelNotFoundError listing the trained datasets when that choice is ambiguous or empty.
    """
    if dataset is not None and model_folder is not None:
        raise ValueError("Give either -d DATASET or -m FOLDER, not both.")

    if model_folder is not None:
        folder = Path(model_folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"Model folder not found: {folder}. Give a results dataset folder or a task folder.")
        if _task_of(folder) is not None:
            dataset_folder = folder.parent if _DATASET_FOLDER.match(folder.parent.name) else None
            return dataset_folder, [folder]
        tasks = list_trained_tasks(folder, checkpoint_name)
        if not tasks:
            raise ModelNotFoundError(
                f"{folder} contains no trained task (seg_{{view}}/fold_k/{checkpoint_name} or cls/fold_k/{checkpoint_name}). "
                f"Give a results dataset folder, a task folder, or another -chk."
            )
        return folder, tasks

    if dataset is not None:
        dataset_folder = paths.results_folder() / paths.dataset_name_from_id(dataset, paths.results_folder())
        tasks = list_trained_tasks(dataset_folder, checkpoint_name)
        if not tasks:
            raise ModelNotFoundError(
                f"No trained task with {checkpoint_name} in {dataset_folder}. Train one with ortho_train "
                f"or choose another -chk."
            )
        return dataset_folder, tasks

    trained = list_trained_datasets(checkpoint_name)
    if len(trained) == 1:
        name = next(iter(trained))
        logger.info("Using the only trained dataset in %s: %s", paths.results_folder(), name)
        dataset_folder = paths.results_folder() / name
        return dataset_folder, list_trained_tasks(dataset_folder, checkpoint_name)

    listing = "; ".join(f"{name}: {', '.join(tasks)}" for name, tasks in trained.items()) or "none"
    raise ModelNotFoundError(
        f"Choose a model with -d DATASET or -m FOLDER. Trained datasets in {paths.results_folder()}: {listing}."
    )


# ---------------------------------------------------------------- names from dataset.json


def _dataset_json(dataset_folder: Path | None) -> dict:
    if dataset_folder is None:
        return {}
    from ortho_nnd.dataset import load_json

    for base in (paths.preprocessed_folder(), paths.raw_folder()):
        candidate = base / dataset_folder.name / "dataset.json"
        if candidate.is_file():
            return load_json(candidate)
    return {}


def _label_names(payload: dict, dataset_folder: Path | None, num_classes: int, checkpoint: Path) -> dict[str, int]:
    labels = payload.get("labels") or _dataset_json(dataset_folder).get("labels")
    if isinstance(labels, dict) and labels:
        return {str(name): int(value) for name, value in labels.items()}

    logger.warning(
        "%s has no 'labels' entry and no dataset.json was found; naming the classes label_1 ... label_%d.",
        checkpoint, num_classes - 1,
    )
    return {"background": 0, **{f"label_{value}": value for value in range(1, num_classes)}}


def _finding_names(payload: dict, dataset_folder: Path | None, num_findings: int, checkpoint: Path) -> list[str]:
    findings = payload.get("findings") or _dataset_json(dataset_folder).get("findings")
    if isinstance(findings, list) and len(findings) == num_findings:
        return [str(name) for name in findings]

    logger.warning(
        "%s has no 'findings' entry with %d names and no matching dataset.json; naming them finding_1 ... finding_%d.",
        checkpoint, num_findings, num_findings,
    )
    return [f"finding_{index + 1}" for index in range(num_findings)]


# ---------------------------------------------------------------- loading


def _required(payload: dict, key: str, checkpoint: Path, hint: str):
    if key not in payload:
        raise ValueError(f"Checkpoint {checkpoint} has no '{key}' entry ({hint}). Retrain with the current ortho_train.")
    return payload[key]


def _load_network(payload: dict, checkpoint: Path, device: torch.device) -> nn.Module:
    spec = _required(payload, "architecture", checkpoint, "the network spec")
    network = build_network_from_spec(spec)
    weights = _required(payload, "network_weights", checkpoint, "the trained weights")
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ValueError(f"The weights in {checkpoint} do not fit its architecture: {error}") from error

    # Only the full-resolution output is used for prediction.
    if hasattr(network, "deep_supervision"):
        network.deep_supervision = False
    return network.to(device).eval()


def _fold_paths(task_folder: Path, folds: list[str] | None, checkpoint_name: str) -> list[tuple[str, Path]]:
    """Return (fold, checkpoint path) pairs: the requested folds, or every numbered trained fold.

    ``fold_all`` (trained on all cases) is used by default only when no numbered fold exists.
    """
    available = _trained_folds(task_folder, checkpoint_name)
    if folds is None:
        numbered = [fold for fold in available if fold.isdigit()]
        chosen = numbered or available
    else:
        folds = [str(fold) for fold in folds]
        missing = [fold for fold in folds if fold not in available]
        if missing:
            raise ModelNotFoundError(
                f"{task_folder} has no {checkpoint_name} for folds {missing}; trained folds: {available or 'none'}."
            )
        chosen = list(folds)
    if not chosen:
        raise ModelNotFoundError(f"{task_folder} has no fold with {checkpoint_name}.")
    return [(fold, task_folder / f"fold_{fold}" / checkpoint_name) for fold in chosen]


def _read_thresholds(fold_folder: Path, findings: list[str]) -> dict[str, float]:
    from ortho_nnd.evaluation.findings import read_thresholds_json

    path = fold_folder / THRESHOLDS_FILE
    if not path.is_file():
        logger.warning("%s not found; using the threshold %.2f for every finding of this fold.", path, DEFAULT_THRESHOLD)
        return {name: DEFAULT_THRESHOLD for name in findings}
    thresholds = read_thresholds_json(path)
    return {name: float(thresholds.get(name, DEFAULT_THRESHOLD)) for name in findings}


def load_segmentation_model(
    task_folder: Path, view: str, folds: list[str] | None, checkpoint_name: str, device: torch.device,
    dataset_folder: Path | None,
) -> SegmentationModel:
    """Load the fold checkpoints of one ``seg_{view}`` folder; raise ValueError for inconsistent folds."""
    fold_models = []
    labels = None
    for fold, checkpoint in _fold_paths(task_folder, folds, checkpoint_name):
        payload = load_checkpoint(checkpoint)
        network = _load_network(payload, checkpoint, device)
        if not hasattr(network, "num_classes"):
            raise ValueError(f"{checkpoint} does not contain a segmentation network (class {type(network).__name__}).")

        view_plans = dict(_required(payload, "view_plans", checkpoint, "the plans of the view"))
        for key in ("patch_size", "mirror_axes", "target_spacing", "normalization"):
            _required(view_plans, key, checkpoint, f"view_plans.{key}")
        fold_models.append(FoldModel(fold, checkpoint, network, view_plans))
        if labels is None:
            labels = _label_names(payload, dataset_folder, network.num_classes, checkpoint)

    classes = {fold.network.num_classes for fold in fold_models}
    if len(classes) > 1:
        raise ValueError(f"The folds in {task_folder} predict different numbers of classes {sorted(classes)}; use -f to pick matching folds.")
    if len(labels) != classes.pop():
        raise ValueError(
            f"{task_folder} has {fold_models[0].network.num_classes} output channels but {len(labels)} declared labels "
            f"{labels}; one channel per declared label is expected. Retrain with this version of ortho_nnd."
        )
    logger.info("Loaded %s: folds %s (%s)", task_folder.name, [fold.fold for fold in fold_models], checkpoint_name)
    return SegmentationModel(view=view, task_folder=task_folder, folds=fold_models, labels=labels)


def _classification_view_plans(payload: dict, checkpoint: Path, views: list[str]) -> dict[str, dict]:
    """Return view -> plans from ``view_plans`` (view to plans) or from ``plans["views"]``."""
    if "view_plans" in payload:
        view_plans = payload["view_plans"]
    elif isinstance(payload.get("plans"), dict) and "views" in payload["plans"]:
        view_plans = payload["plans"]["views"]
    else:
        raise ValueError(
            f"Checkpoint {checkpoint} has neither 'view_plans' nor 'plans' with 'views' (the plans of each view). "
            f"Retrain with the current ortho_train."
        )
    if "patch_size" in view_plans:
        raise ValueError(
            f"{checkpoint}: 'view_plans' contains one view's plans, but a diagnosis checkpoint needs a mapping of "
            f"view name to plans for {views}."
        )
    missing = [view for view in views if view not in view_plans]
    if missing:
        raise ValueError(f"{checkpoint}: 'view_plans' lacks the views {missing} that the classifier uses.")
    return {view: dict(view_plans[view]) for view in views}


def load_classification_model(
    task_folder: Path, folds: list[str] | None, checkpoint_name: str, device: torch.device, dataset_folder: Path | None
) -> ClassificationModel:
    """Load the fold checkpoints of the ``cls`` folder with their thresholds."""
    fold_models = []
    findings = None
    input_patch_size: dict[str, list[int]] = {}
    for fold, checkpoint in _fold_paths(task_folder, folds, checkpoint_name):
        payload = load_checkpoint(checkpoint)
        network = _load_network(payload, checkpoint, device)
        if not hasattr(network, "num_findings"):
            raise ValueError(f"{checkpoint} does not contain a diagnosis network (class {type(network).__name__}).")

        view_plans = _classification_view_plans(payload, checkpoint, list(network.views))
        if findings is None:
            findings = _finding_names(payload, dataset_folder, network.num_findings, checkpoint)
            configured = payload.get("input_sizes") or {}
            input_patch_size = {
                view: [int(v) for v in configured.get(view, view_plans[view]["patch_size"])] for view in network.views
            }
        thresholds = _read_thresholds(checkpoint.parent, findings)
        fold_models.append(FoldModel(fold, checkpoint, network, view_plans, thresholds))

    signatures = {(tuple(fold.network.views), fold.network.num_findings, fold.network.fusion) for fold in fold_models}
    if len(signatures) > 1:
        raise ValueError(f"The folds in {task_folder} differ in views, findings or fusion: {sorted(signatures)}.")
    logger.info("Loaded %s: folds %s (%s)", task_folder.name, [fold.fold for fold in fold_models], checkpoint_name)
    return ClassificationModel(task_folder=task_folder, folds=fold_models, findings=findings, input_patch_size=input_patch_size)


def load_models(
    dataset: str | None,
    model_folder: str | None,
    folds: list[str] | None,
    checkpoint_name: str,
    tasks: list[str] | None,
    device: torch.device,
) -> ModelSet:
    """Locate and load every requested task; ``tasks=None`` means every trained task."""
    if checkpoint_name not in CHECKPOINT_CHOICES:
        raise ValueError(f"Invalid checkpoint name {checkpoint_name!r}; use one of {CHECKPOINT_CHOICES}.")
    dataset_folder, task_folders = resolve_task_folders(dataset, model_folder, checkpoint_name)

    models = ModelSet(dataset_folder=dataset_folder)
    for task_folder in task_folders:
        task, view = _task_of(task_folder)
        if tasks is not None and task not in tasks:
            continue
        if task == "seg":
            models.segmentation[view] = load_segmentation_model(
                task_folder, view, folds, checkpoint_name, device, dataset_folder
            )
        else:
            models.classification = load_classification_model(task_folder, folds, checkpoint_name, device, dataset_folder)

    trained = sorted({_task_of(folder)[0] for folder in task_folders})
    for task in tasks or []:
        if task not in trained:
            raise ModelNotFoundError(
                f"--tasks requests {task!r} but no {task} model was found; trained tasks: {trained or 'none'}."
            )
    if not models.segmentation and models.classification is None:
        raise ModelNotFoundError(f"No model to run: requested tasks {tasks} among trained tasks {trained}.")
    return models


def preprocessing_key(view: str, view_plans: dict) -> tuple[str, str]:
    """Return the cache key of a preprocessed scan: the view and the plans identifier."""
    return view, plans_identifier({**view_plans, "view": view})
