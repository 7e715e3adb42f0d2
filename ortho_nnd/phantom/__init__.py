"""Knee phantom: a continuous 3D knee model with 11 labelled structures and 8 findings,
rendered as sagittal, coronal and axial acquisitions, and written as a raw dataset."""
from ortho_nnd.phantom.acquisition import (
    CONTRASTS,
    SIZES,
    Acquisition,
    render_acquisition,
    sample_acquisition,
)
from ortho_nnd.phantom.anatomy import (
    LABELS,
    TISSUES,
    Subject,
    draw_findings,
    evaluate_model,
    local_to_world,
    sample_subject,
    world_to_local,
)
from ortho_nnd.phantom.dataset import generate_phantom_dataset, plan_exams
from ortho_nnd.phantom.findings import FINDING_PREVALENCE, FINDING_SIGNS, FINDINGS
from ortho_nnd.phantom.grid import VIEWS, Grid

__all__ = [
    "Acquisition", "CONTRASTS", "FINDINGS", "FINDING_PREVALENCE", "FINDING_SIGNS", "Grid", "LABELS", "SIZES",
    "Subject", "TISSUES", "VIEWS", "draw_findings", "evaluate_model", "generate_phantom_dataset",
    "local_to_world", "plan_exams", "render_acquisition", "sample_acquisition", "sample_subject", "world_to_local",
]
