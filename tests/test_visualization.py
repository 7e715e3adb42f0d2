"""Tests of the overlay plot."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from ortho_nnd.visualization import DPI, PANEL_SIZE_INCHES, plot_exam_overlay


def make_view(size, spacing, with_label=True):
    array = np.random.default_rng(0).normal(100, 10, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    if not with_label:
        return image, None
    labels = np.zeros(size[::-1], dtype=np.uint8)
    labels[:, 5:15, 5:15] = 1
    labels[:, 20:25, 10:30] = 2
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    return image, label


def test_overlay_png_size(tmp_path):
    views = {
        "sagittal": make_view((40, 32, 6), (0.5, 0.5, 4.0)),
        "coronal": make_view((40, 40, 8), (0.5, 0.8, 3.5)),
        "axial": make_view((36, 40, 5), (0.6, 0.6, 4.0), with_label=False),
    }
    output = plot_exam_overlay(views, tmp_path / "sub" / "overlay.png", {"background": 0, "femur": 1, "tibia": 2},
                               title="case_001")
    assert output == tmp_path / "sub" / "overlay.png"
    pixels = imread(str(output))
    assert pixels.shape[:2] == (int(PANEL_SIZE_INCHES * DPI), int(3 * PANEL_SIZE_INCHES * DPI))
    # Nothing but the PNG is left in the folder.
    assert [p.name for p in output.parent.iterdir()] == ["overlay.png"]


def test_overlay_rejects_mismatched_label(tmp_path):
    image, _ = make_view((40, 32, 6), (0.5, 0.5, 4.0))
    _, label = make_view((30, 32, 6), (0.5, 0.5, 4.0))
    with pytest.raises(ValueError, match="label size"):
        plot_exam_overlay({"sagittal": (image, label)}, tmp_path / "overlay.png")
    assert not list(tmp_path.iterdir())


def test_overlay_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="at least one view"):
        plot_exam_overlay({}, tmp_path / "overlay.png")
