"""Overlay plots of exams: one panel per view with label contours.

Each panel shows the middle slice along the acquisition's own slice axis (image index axis
2), displayed with the in-plane spacing as aspect ratio, with one contour colour per label.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

logger = logging.getLogger(__name__)

# Size of one panel in inches and the resolution of the PNG.
PANEL_SIZE_INCHES = 4.0
DPI = 100
# Image display window as percentiles of the slice intensities.
DISPLAY_PERCENTILES = (0.5, 99.5)
# Contour colours, cycled by label value: tab10 followed by five colours that differ from
# all of tab10, so that labels 1 to 15 all get different colours.
CONTOUR_COLOURS = [*plt.get_cmap("tab10").colors, "#ffff33", "#1b9e77", "#e7298a", "#a6d854", "#fdbf6f"]


def label_colour(value: int):
    """Return the contour colour of a label value (value 1 gets the first colour)."""
    return CONTOUR_COLOURS[(int(value) - 1) % len(CONTOUR_COLOURS)]


def plot_exam_overlay(
    views: dict[str, tuple[sitk.Image, sitk.Image | None]],
    output_png: Path,
    label_names: dict[str, int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the middle slice of each view with label contours and write it as a PNG.

    ``views`` maps a view name to ``(image, label)``; the label may be None, and a given label
    must have the image's size. ``label_names`` maps names to label values for the legend (the
    values are used when it is None). The PNG is ``PANEL_SIZE_INCHES * DPI`` pixels high and
    that times the number of views wide. It is written to a temporary file and renamed.
    """
    if not views:
        raise ValueError("plot_exam_overlay needs at least one view; 'views' is empty.")
    output_png = Path(output_png)
    value_to_name = {value: name for name, value in (label_names or {}).items() if value != 0}

    figure, axes = plt.subplots(
        1, len(views), figsize=(PANEL_SIZE_INCHES * len(views), PANEL_SIZE_INCHES), dpi=DPI, squeeze=False
    )
    try:
        _draw_figure(figure, axes[0], views, value_to_name, title)
        _save_atomically(figure, output_png)
    finally:
        plt.close(figure)
    logger.info("Wrote overlay %s", output_png)
    return output_png


def _draw_figure(figure, axes, views, value_to_name: dict[int, str], title: str | None) -> None:
    legend_values: set[int] = set()
    for axis, (view, (image, label)) in zip(axes, views.items()):
        legend_values |= _draw_view(axis, view, image, label)

    if legend_values:
        handles = [
            Line2D([0], [0], color=label_colour(value), lw=2, label=value_to_name.get(value, str(value)))
            for value in sorted(legend_values)
        ]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    # Fixed margins instead of tight_layout keep the PNG size exactly as documented.
    figure.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.12, wspace=0.03)


def _save_atomically(figure, output_png: Path) -> None:
    output_png.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=output_png.parent, prefix=f".{output_png.stem}_")
    os.close(handle)
    # mkstemp creates the file readable by its owner only; give the PNG the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        figure.savefig(temporary, dpi=DPI)
        os.replace(temporary, output_png)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _draw_view(axis, view: str, image: sitk.Image, label: sitk.Image | None) -> set[int]:
    """Draw one panel and return the label values whose contours were drawn."""
    if image.GetDimension() != 3:
        raise ValueError(f"View {view!r}: expected a 3D image, got {image.GetDimension()}D.")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    middle = array.shape[0] // 2
    slice_image = array[middle]
    low, high = np.percentile(slice_image, DISPLAY_PERCENTILES)
    spacing_x, spacing_y = image.GetSpacing()[:2]
    # Rows are index axis 1 and columns index axis 0, so the pixel aspect is spacing_y / spacing_x.
    axis.imshow(slice_image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                aspect=spacing_y / spacing_x, interpolation="nearest")
    axis.set_title(f"{view} (slice {middle + 1} of {array.shape[0]})", fontsize=9)
    axis.set_axis_off()

    drawn: set[int] = set()
    if label is None:
        return drawn
    if label.GetSize() != image.GetSize():
        raise ValueError(
            f"View {view!r}: label size {label.GetSize()} differs from image size {image.GetSize()}; "
            "resample the label onto the image grid first."
        )
    label_slice = sitk.GetArrayFromImage(label)[middle]
    for value in np.unique(label_slice):
        if value == 0:
            continue
        mask = (label_slice == value).astype(np.float32)
        axis.contour(mask, levels=[0.5], colors=[label_colour(value)], linewidths=0.8)
        drawn.add(int(value))
    return drawn
