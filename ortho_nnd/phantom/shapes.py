"""Implicit shape primitives evaluated on arrays of points.

The shape functions take points of shape (N, 3) in millimetres and return a boolean mask of
shape (N,). The ``grow`` argument moves the surface outwards (positive) or inwards
(negative) by about that many millimetres, so ``shape(p, 0) & ~shape(p, -t)`` is a shell of
thickness ``t``. For ellipsoids the offset is exact only along the principal axes, which is
close enough for the smooth, convex shapes of the phantom.
"""
from __future__ import annotations

import numpy as np


def ellipsoid(points: np.ndarray, center, radii, grow: float = 0.0) -> np.ndarray:
    """Return the points inside an axis-aligned ellipsoid."""
    radii = np.maximum(np.asarray(radii, dtype=np.float32) + grow, 1e-3)
    center = np.asarray(center, dtype=np.float32)
    level = np.zeros(len(points), dtype=np.float32)
    for axis in range(3):
        # Per-axis arithmetic on contiguous columns is faster than on the (N, 3) array.
        scaled = (points[:, axis] - center[axis]) / radii[axis]
        level += scaled * scaled
    return level < 1.0


def elliptic_cylinder(points: np.ndarray, center_ma, radii_ma, s_range, grow: float = 0.0) -> np.ndarray:
    """Return the points inside a cylinder along axis 2 with an elliptic cross-section.

    ``center_ma`` and ``radii_ma`` are given for axes 0 and 1, ``s_range`` is the extent
    along axis 2 as (low, high).
    """
    radii = np.maximum(np.asarray(radii_ma, dtype=np.float32) + grow, 1e-3)
    d0 = (points[:, 0] - center_ma[0]) / radii[0]
    d1 = (points[:, 1] - center_ma[1]) / radii[1]
    inside_section = d0 * d0 + d1 * d1 < 1.0
    return inside_section & (points[:, 2] > s_range[0] - grow) & (points[:, 2] < s_range[1] + grow)


def segment_distance(points: np.ndarray, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Return the distance of each point to a line segment and its position t in [0, 1] along it."""
    start = np.asarray(start, dtype=np.float32)
    axis = np.asarray(end, dtype=np.float32) - start
    relative = [points[:, i] - start[i] for i in range(3)]
    t = np.clip(sum(relative[i] * (axis[i] / float(axis @ axis)) for i in range(3)), 0.0, 1.0)
    squared = np.zeros(len(points), dtype=np.float32)
    for i in range(3):
        difference = relative[i] - t * axis[i]
        squared += difference * difference
    return np.sqrt(squared), t


def transform_points(points: np.ndarray, matrix: np.ndarray, offset_before, offset_after) -> np.ndarray:
    """Return ``matrix @ (p - offset_before) + offset_after`` for every row p, as float32 columns.

    The result is column-major because the shape functions read one coordinate column at a
    time. Column arithmetic also avoids a BLAS call, which is slow for (N, 3) arrays when the
    cores are busy.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    offset_before = np.asarray(offset_before, dtype=np.float64)
    offset_after = np.asarray(offset_after, dtype=np.float64)
    centred = [np.asarray(points[:, j] - offset_before[j], dtype=np.float32) for j in range(3)]
    result = np.empty((len(points), 3), dtype=np.float32, order="F")
    for i in range(3):
        column = np.full(len(points), offset_after[i], dtype=np.float32)
        for j in range(3):
            column += np.float32(matrix[i, j]) * centred[j]
        result[:, i] = column
    return result


def capsule(points: np.ndarray, start, end, radius: float, grow: float = 0.0) -> np.ndarray:
    """Return the points within ``radius + grow`` of a line segment."""
    distance, _ = segment_distance(points, start, end)
    return distance < radius + grow


def box(points: np.ndarray, low, high, grow: float = 0.0) -> np.ndarray:
    """Return the points inside an axis-aligned box."""
    low = np.asarray(low, dtype=np.float32) - grow
    high = np.asarray(high, dtype=np.float32) + grow
    return np.all((points > low) & (points < high), axis=1)


def rotation_about_axis(axis, angle_degrees: float) -> np.ndarray:
    """Return the 3x3 rotation matrix for a right-handed rotation about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(angle_degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
