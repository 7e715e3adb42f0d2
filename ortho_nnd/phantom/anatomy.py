"""Continuous knee model: per-subject parameters and tissue/label evaluation at world points.

The model is built in a knee-local frame in millimetres with axes

* ``m``: towards medial (the body midline),
* ``a``: towards anterior,
* ``s``: towards superior,

with the origin on the joint line between the tibial plateaus. Because medial is an axis
of its own, a left knee is the mirror image of a right knee: for a right knee ``m`` is
world +x (patient left in LPS), for a left knee it is world -x. Anterior is world -y and
superior is world +z in LPS for both sides.

Structures are implicit shapes (see ``shapes``), painted in a fixed order so that later
structures replace earlier ones: soft tissue, fluid, tendons and ligaments, menisci,
cartilage, bone. The femur, patella and everything attached to them are evaluated in a
femoral frame rotated by the flexion angle about the medial-lateral axis through the
condyle centres.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ortho_nnd.phantom import shapes
from ortho_nnd.phantom.findings import FINDING_PREVALENCE, FINDINGS

# Segmentation labels written to labelsTr and dataset.json.
LABELS = {
    "background": 0,
    "femur": 1,
    "tibia": 2,
    "fibula": 3,
    "patella": 4,
    "femoral_cartilage": 5,
    "tibial_cartilage": 6,
    "patellar_cartilage": 7,
    "medial_meniscus": 8,
    "lateral_meniscus": 9,
    "acl": 10,
    "pcl": 11,
}

# Tissue classes. Each has its own intensity per contrast (see ``acquisition.CONTRASTS``).
TISSUES = (
    "air",
    "skin",
    "fat",
    "muscle",
    "fluid",
    "tendon",
    "collateral_ligament",
    "injured_ligament",
    "cortical_bone",
    "bone_marrow",
    "cartilage",
    "meniscus",
    "cruciate_ligament",
)
TISSUE = {name: index for index, name in enumerate(TISSUES)}

# Tissue thicknesses in mm, which do not scale with knee size.
SKIN_THICKNESS_MM = 2.0
SUBCUTANEOUS_FAT_THICKNESS_MM = 8.0
CORTEX_THICKNESS_MM = 1.5
FEMORAL_CARTILAGE_THICKNESS_MM = 2.2
TIBIAL_CARTILAGE_THICKNESS_MM = 2.0
PATELLAR_CARTILAGE_THICKNESS_MM = 2.5
MENISCAL_TEAR_THICKNESS_MM = 1.5

# Fraction of a cruciate ligament's length replaced by fluid in a tear.
CRUCIATE_TEAR_GAP_FRACTION = 0.25
# Collateral ligament injury: thickness factor.
COLLATERAL_INJURY_THICKENING = 2.5
# Patellar dislocation: shift in the knee frame (m, a, s) in mm before scaling, and tilt about s.
DISLOCATION_SHIFT_MM = (-20.0, 5.0, -2.0)
DISLOCATION_TILT_DEGREES = 25.0


@dataclass(frozen=True)
class Subject:
    """Parameters of one knee. All lengths are in mm, and ``scale`` multiplies the anatomy."""

    side: str  # "left" or "right"
    scale: float
    flexion_degrees: float
    center: tuple[float, float, float]  # LPS world position of the knee-frame origin
    rotation: tuple[tuple[float, float, float], ...]  # 3x3 leg rotation relative to the scanner
    # Shape parameters before scaling: distance of each condyle centre from the midline (m),
    # condyle half-widths (m) and half-depth (a), tibial plateau half-width (m) and half-depth (a).
    condyle_offset: float
    medial_condyle_width: float
    lateral_condyle_width: float
    condyle_depth: float
    plateau_width: float
    plateau_depth: float
    # Start of a cruciate tear as a fraction of the ligament length from its femoral end.
    acl_gap_start: float
    pcl_gap_start: float
    findings: dict = field(default_factory=dict)  # finding name -> present

    def with_findings(self, **changes: bool) -> "Subject":
        """Return a copy with some findings switched on or off and everything else equal."""
        unknown = sorted(set(changes) - set(FINDINGS))
        if unknown:
            raise ValueError(f"Unknown finding(s) {unknown}; valid findings are {list(FINDINGS)}.")
        findings = dict(self.findings)
        findings.update({name: bool(value) for name, value in changes.items()})
        return replace(self, findings=findings)

    def with_side(self, side: str) -> "Subject":
        """Return the same knee as a left or right knee."""
        if side not in ("left", "right"):
            raise ValueError(f"Invalid side {side!r}; use 'left' or 'right'.")
        return replace(self, side=side)


def sample_subject(rng: np.random.Generator, side: str | None = None) -> Subject:
    """Draw the anatomy, pose and findings of one knee from ``rng``.

    Every call consumes the same number of random values whatever the outcome, so a
    subject's anatomy does not depend on which findings it has.
    """
    drawn_side = "right" if rng.random() < 0.5 else "left"
    scale = rng.uniform(0.88, 1.12)
    flexion = rng.uniform(0.0, 20.0)
    # The scanner isocentre is rarely at the joint centre.
    center = tuple(float(value) for value in rng.uniform(-15.0, 15.0, size=3))
    # Leg rotation and tilt relative to the scanner axes, up to 6 degrees.
    axis = rng.normal(size=3)
    rotation = shapes.rotation_about_axis(axis, rng.uniform(-6.0, 6.0))
    anatomy = dict(
        condyle_offset=rng.uniform(18.0, 20.0),
        medial_condyle_width=rng.uniform(11.0, 13.0),
        lateral_condyle_width=rng.uniform(10.5, 12.5),
        condyle_depth=rng.uniform(20.0, 23.0),
        plateau_width=rng.uniform(31.0, 34.0),
        plateau_depth=rng.uniform(22.0, 25.0),
        acl_gap_start=rng.uniform(0.3, 0.5),
        pcl_gap_start=rng.uniform(0.3, 0.5),
    )
    findings = draw_findings(rng)

    return Subject(
        side=side or drawn_side,
        scale=float(scale),
        flexion_degrees=float(flexion),
        center=center,
        rotation=tuple(tuple(float(v) for v in row) for row in rotation),
        findings=findings,
        **{key: float(value) for key, value in anatomy.items()},
    )


def draw_findings(rng: np.random.Generator) -> dict[str, bool]:
    """Draw each finding independently with its prevalence."""
    draws = rng.random(len(FINDINGS))
    return {name: bool(draw < FINDING_PREVALENCE[name]) for name, draw in zip(FINDINGS, draws)}


def local_to_world_matrix(subject: Subject) -> np.ndarray:
    """Return the 3x3 matrix that maps knee-local (m, a, s) vectors to LPS world vectors."""
    medial_sign = 1.0 if subject.side == "right" else -1.0
    return np.asarray(subject.rotation) @ np.diag([medial_sign, -1.0, 1.0])


def world_to_local(subject: Subject, world_points: np.ndarray) -> np.ndarray:
    """Map (N, 3) LPS world points in mm to the knee-local frame (float32)."""
    inverse = np.linalg.inv(local_to_world_matrix(subject))
    return shapes.transform_points(np.asarray(world_points), inverse, subject.center, (0.0, 0.0, 0.0))


def local_to_world(subject: Subject, local_points: np.ndarray) -> np.ndarray:
    """Map (N, 3) knee-local points to LPS world points in mm."""
    return np.asarray(local_points) @ local_to_world_matrix(subject).T + np.asarray(subject.center)


class _Painter:
    """Tissue and label arrays that later structures overwrite."""

    def __init__(self, count: int):
        self.tissue = np.full(count, TISSUE["air"], dtype=np.uint8)
        self.label = np.zeros(count, dtype=np.uint8)

    def paint(self, mask: np.ndarray, tissue: str, label: str = "background") -> None:
        self.tissue[mask] = TISSUE[tissue]
        self.label[mask] = LABELS[label]


def evaluate_model(subject: Subject, world_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the tissue class and segmentation label (both uint8, shape (N,)) at world points."""
    points = world_to_local(subject, np.asarray(world_points, dtype=np.float64).reshape(-1, 3))
    k = subject.scale
    painter = _Painter(len(points))

    # The femoral frame: the femur and everything attached to it rotate with flexion.
    flexion_center = np.array([0.0, -4.0 * k, 23.0 * k], dtype=np.float32)
    flexion = shapes.rotation_about_axis((1.0, 0.0, 0.0), -subject.flexion_degrees).astype(np.float32)
    # femoral = flexion^T (p - c) + c, the inverse of the flexion rotation about c.
    femoral = shapes.transform_points(points, flexion.T, flexion_center, flexion_center)

    def femoral_to_local(point) -> np.ndarray:
        return flexion @ (np.asarray(point, dtype=np.float32) - flexion_center) + flexion_center

    patellar, patella_to_femoral = _patellar_frame(subject, femoral)

    _paint_soft_tissue(painter, points, femoral, subject)
    _paint_tendons(painter, points, subject, patella_to_femoral, femoral_to_local)
    _paint_collateral_ligaments(painter, points, subject)
    _paint_cruciate_ligaments(painter, points, subject, femoral_to_local)
    _paint_menisci(painter, points, subject)
    # The bone surfaces are needed for both cartilage and bone, so they are evaluated once.
    surfaces = {
        "femur": _femur(femoral, subject, 0.0),
        "tibia": _tibia(points, subject, 0.0),
        "fibula": _fibula(points, subject, 0.0),
        "patella": _patella(patellar, subject, 0.0),
    }
    _paint_cartilage(painter, points, femoral, patellar, subject, surfaces)
    _paint_bones(painter, points, femoral, patellar, subject, surfaces)
    return painter.tissue, painter.label


def _patellar_frame(subject: Subject, femoral: np.ndarray):
    """Return the points in the patella's own frame and a map from that frame to the femoral frame."""
    k = subject.scale
    center = np.array([0.0, 34.0 * k, 30.0 * k], dtype=np.float32)
    if not subject.findings.get("patellar_dislocation", False):
        return femoral, lambda point: np.asarray(point, dtype=np.float32)

    shift = np.asarray(DISLOCATION_SHIFT_MM, dtype=np.float32) * k
    tilt = shapes.rotation_about_axis((0.0, 0.0, 1.0), DISLOCATION_TILT_DEGREES).astype(np.float32)
    # femoral = tilt (patellar - center) + center + shift, so patellar = tilt^T (femoral - center - shift) + center.
    patellar = shapes.transform_points(femoral, tilt.T, center + shift, center)

    def patella_to_femoral(point) -> np.ndarray:
        return tilt @ (np.asarray(point, dtype=np.float32) - center) + center + shift

    return patellar, patella_to_femoral


def _paint_soft_tissue(painter: _Painter, points, femoral, subject: Subject) -> None:
    k = subject.scale
    body_center, body_radii, body_extent = (0.0, -3.0 * k), (58.0 * k, 52.0 * k), (-400.0, 400.0)
    body = shapes.elliptic_cylinder(points, body_center, body_radii, body_extent)
    under_skin = shapes.elliptic_cylinder(points, body_center, body_radii, body_extent, grow=-SKIN_THICKNESS_MM)
    deep = shapes.elliptic_cylinder(
        points, body_center, body_radii, body_extent, grow=-(SKIN_THICKNESS_MM + SUBCUTANEOUS_FAT_THICKNESS_MM)
    )
    painter.paint(body, "skin")
    painter.paint(under_skin, "fat")
    painter.paint(deep, "muscle")

    # Infrapatellar (Hoffa) fat pad and popliteal fat.
    painter.paint(deep & shapes.ellipsoid(points, (0, 16 * k, 4 * k), (22 * k, 9 * k, 12 * k)), "fat")
    painter.paint(deep & shapes.ellipsoid(points, (0, -30 * k, 8 * k), (14 * k, 10 * k, 30 * k)), "fat")

    # A thin fluid film in the tibiofemoral joint space. Cartilage painted later leaves only the gap.
    for compartment_m in (subject.condyle_offset * k, -subject.condyle_offset * k):
        film = shapes.elliptic_cylinder(points, (compartment_m, -4 * k), (13 * k, 18 * k), (-0.5, 3.0 * k))
        painter.paint(film, "fluid")

    # Suprapatellar recess, part of the femoral frame. An effusion distends it.
    if subject.findings.get("joint_effusion", False):
        recess = shapes.ellipsoid(femoral, (0, 19 * k, 48 * k), (26 * k, 7 * k, 18 * k))
    else:
        recess = shapes.ellipsoid(femoral, (0, 17 * k, 44 * k), (18 * k, 2.5 * k, 9 * k))
    painter.paint(recess & deep, "fluid")


def _paint_tendons(painter: _Painter, points, subject: Subject, patella_to_femoral, femoral_to_local) -> None:
    k = subject.scale

    def patella_point(point):
        return femoral_to_local(patella_to_femoral(np.asarray(point, dtype=np.float32) * k))

    # Patellar tendon from the inferior pole of the patella to the tibial tuberosity.
    painter.paint(shapes.capsule(points, patella_point((0, 33, 10)), (0, 17 * k, -30 * k), 3.0 * k), "tendon")
    # Quadriceps tendon from the superior pole upwards, in the femoral frame.
    painter.paint(
        shapes.capsule(points, patella_point((0, 31, 50)), femoral_to_local(np.array([0, 24, 110]) * k), 3.5 * k),
        "tendon",
    )


def _paint_collateral_ligaments(painter: _Painter, points, subject: Subject) -> None:
    k = subject.scale
    ligaments = {
        # name: (m centre, half thickness, a centre, half width, s range), all before scaling.
        "mcl_injury": (35.0, 1.2, -3.0, 7.0, (-38.0, 30.0)),
        "lcl_injury": (-35.0, 1.0, -8.0, 5.0, (-12.0, 28.0)),
    }
    for finding, (m_center, half_thickness, a_center, half_width, s_range) in ligaments.items():
        injured = subject.findings.get(finding, False)
        if injured:
            half_thickness *= COLLATERAL_INJURY_THICKENING
        low = (m_center * k - half_thickness, (a_center - half_width) * k, s_range[0] * k)
        high = (m_center * k + half_thickness, (a_center + half_width) * k, s_range[1] * k)
        painter.paint(shapes.box(points, low, high), "injured_ligament" if injured else "collateral_ligament")


def _paint_cruciate_ligaments(painter: _Painter, points, subject: Subject, femoral_to_local) -> None:
    k = subject.scale
    ligaments = {
        # label: (femoral attachment in the femoral frame, tibial attachment, radius), before scaling.
        "acl": ((-7.0, -12.0, 17.0), (3.0, 8.0, -2.5), 3.5, "acl_tear", subject.acl_gap_start),
        "pcl": ((7.0, 2.0, 17.0), (0.0, -20.0, -4.0), 4.0, "pcl_tear", subject.pcl_gap_start),
    }
    for label, (femoral_end, tibial_end, radius, finding, gap_start) in ligaments.items():
        start = femoral_to_local(np.asarray(femoral_end) * k)
        end = np.asarray(tibial_end, dtype=np.float32) * k
        distance, t = shapes.segment_distance(points, start, end)
        ligament = distance < radius * k
        if subject.findings.get(finding, False):
            gap = (t > gap_start) & (t < gap_start + CRUCIATE_TEAR_GAP_FRACTION)
            # Fluid fills the gap and a little around it, where the torn fibres retracted.
            painter.paint((distance < 1.3 * radius * k) & gap, "fluid")
            ligament &= ~gap
        painter.paint(ligament, "cruciate_ligament", label)


def _paint_menisci(painter: _Painter, points, subject: Subject) -> None:
    k = subject.scale
    compartment_radii = (13.0 * k, 18.0 * k)
    maximum_height = 6.0 * k
    menisci = {
        # label: (compartment m centre, half width of the opening between the horns, tear finding)
        "medial_meniscus": (subject.condyle_offset * k, 0.35, "medial_meniscus_tear"),
        "lateral_meniscus": (-subject.condyle_offset * k, 0.2, "lateral_meniscus_tear"),
    }
    for label, (m_center, opening, finding) in menisci.items():
        dm = (points[:, 0] - m_center) / compartment_radii[0]
        da = (points[:, 1] + 4.0 * k) / compartment_radii[1]
        radius = np.sqrt(dm * dm + da * da)
        # Wedge: height grows from the inner rim to the periphery.
        height = maximum_height * np.clip((radius - 0.6) / 0.45, 0.0, 1.0)
        s = points[:, 2]
        wedge = (radius > 0.65) & (radius < 1.08) & (s > 0.0) & (s < height)
        # The C opens towards the intercondylar notch, i.e. towards m = 0.
        towards_notch = -np.sign(m_center) * dm
        horns_gap = (towards_notch > 0.5) & (np.abs(da) < opening)
        meniscus = wedge & ~horns_gap
        painter.paint(meniscus, "meniscus", label)

        if subject.findings.get(finding, False):
            # Horizontal tear in the posterior horn and body, where the wedge is tall enough.
            tear_height = 1.8 * k
            tear = (
                meniscus
                & (np.abs(s - tear_height) < MENISCAL_TEAR_THICKNESS_MM / 2)
                & (radius > 0.8)
                & (da < 0.3)
            )
            painter.paint(tear, "fluid", label)


def _femur(femoral: np.ndarray, subject: Subject, grow: float) -> np.ndarray:
    k = subject.scale
    condyle_s = 23.0 * k
    medial = shapes.ellipsoid(
        femoral, (subject.condyle_offset * k, -4 * k, condyle_s),
        (subject.medial_condyle_width * k, subject.condyle_depth * k, 20 * k), grow,
    )
    lateral = shapes.ellipsoid(
        femoral, (-subject.condyle_offset * k, -4 * k, condyle_s),
        (subject.lateral_condyle_width * k, subject.condyle_depth * k, 20 * k), grow,
    )
    metaphysis = shapes.ellipsoid(femoral, (0, -2 * k, 34 * k), (33 * k, 21 * k, 16 * k), grow)
    shaft = shapes.elliptic_cylinder(femoral, (0, -2 * k), (14 * k, 14 * k), (34 * k, 400.0), grow)
    notch = shapes.box(femoral, (-7 * k, -60.0, -20.0), (7 * k, 8 * k, 27 * k), -grow)
    return (medial | lateral | metaphysis | shaft) & ~notch


def _tibia(points: np.ndarray, subject: Subject, grow: float) -> np.ndarray:
    k = subject.scale
    plateau_top = -TIBIAL_CARTILAGE_THICKNESS_MM
    taper_length = 36.0 * k
    fraction = np.clip((plateau_top - points[:, 2]) / taper_length, 0.0, 1.0)
    radius_m = subject.plateau_width * k + (16.0 * k - subject.plateau_width * k) * fraction + grow
    radius_a = subject.plateau_depth * k + (15.0 * k - subject.plateau_depth * k) * fraction + grow
    dm = points[:, 0] / radius_m
    da = (points[:, 1] + 3.0 * k) / radius_a
    return (dm * dm + da * da < 1.0) & (points[:, 2] < plateau_top + grow) & (points[:, 2] > -400.0)


def _fibula(points: np.ndarray, subject: Subject, grow: float) -> np.ndarray:
    k = subject.scale
    head = shapes.ellipsoid(points, (-31 * k, -17 * k, -14 * k), (8 * k, 8 * k, 7 * k), grow)
    shaft = shapes.elliptic_cylinder(points, (-31 * k, -17 * k), (6 * k, 6 * k), (-400.0, -14 * k), grow)
    return head | shaft


def _patella(patellar: np.ndarray, subject: Subject, grow: float) -> np.ndarray:
    k = subject.scale
    return shapes.ellipsoid(patellar, (0, 34 * k, 30 * k), (20 * k, 8 * k, 21 * k), grow)


def _paint_cartilage(painter: _Painter, points, femoral, patellar, subject: Subject, surfaces: dict) -> None:
    k = subject.scale
    femur_grown = _femur(femoral, subject, FEMORAL_CARTILAGE_THICKNESS_MM)
    in_notch = shapes.box(femoral, (-7 * k, -60.0, -20.0), (7 * k, 8 * k, 27 * k))
    condylar = femoral[:, 2] < 26 * k
    trochlear = (femoral[:, 1] > 8 * k) & (femoral[:, 2] < 42 * k)
    # The outer (epicondylar) sides of the condyles are not articular.
    articular_width = subject.condyle_offset * k + 0.7 * min(subject.medial_condyle_width, subject.lateral_condyle_width) * k
    not_epicondylar = np.abs(femoral[:, 0]) < articular_width
    cartilage = femur_grown & ~surfaces["femur"] & ~in_notch & (condylar | trochlear) & not_epicondylar
    painter.paint(cartilage, "cartilage", "femoral_cartilage")

    for compartment_m in (subject.condyle_offset * k, -subject.condyle_offset * k):
        plateau = shapes.elliptic_cylinder(
            points, (compartment_m, -4 * k), (12 * k, 16 * k), (-TIBIAL_CARTILAGE_THICKNESS_MM, 0.0)
        )
        painter.paint(plateau, "cartilage", "tibial_cartilage")

    patella = surfaces["patella"]
    patella_grown = _patella(patellar, subject, PATELLAR_CARTILAGE_THICKNESS_MM)
    articular_side = patellar[:, 1] < 32 * k
    painter.paint(patella_grown & ~patella & articular_side, "cartilage", "patellar_cartilage")


def _paint_bones(painter: _Painter, points, femoral, patellar, subject: Subject, surfaces: dict) -> None:
    bones = {
        "femur": lambda grow: _femur(femoral, subject, grow),
        "tibia": lambda grow: _tibia(points, subject, grow),
        "fibula": lambda grow: _fibula(points, subject, grow),
        "patella": lambda grow: _patella(patellar, subject, grow),
    }
    for label, bone in bones.items():
        painter.paint(surfaces[label], "cortical_bone", label)
        painter.paint(bone(-CORTEX_THICKNESS_MM), "bone_marrow", label)
