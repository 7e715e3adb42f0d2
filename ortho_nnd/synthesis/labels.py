"""Label names of the source label maps."""
from __future__ import annotations

import json
from pathlib import Path

# Labels of the knee label maps this project is tested with (3D DESS segmentations of right
# knees, 384 x 384 x 160 at 0.36 x 0.36 x 0.7 mm). Maps with other labels need a JSON file
# mapping each name to its integer value.
DEFAULT_KNEE_LABELS = {
    "background": 0,
    "femoral_cartilage": 1,
    "medial_tibial_cartilage": 2,
    "lateral_tibial_cartilage": 3,
    "patellar_cartilage": 4,
    "femur": 5,
    "tibia": 6,
    "patella": 7,
    "fibula": 8,
    "lateral_meniscus": 9,
    "medial_meniscus": 10,
}


def load_label_names(path: Path | None) -> dict[str, int]:
    """Read a {name: value} JSON file, or return DEFAULT_KNEE_LABELS when ``path`` is None."""
    if path is None:
        return dict(DEFAULT_KNEE_LABELS)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label names file {path} not found; give a JSON file like {{\"background\": 0, ...}}.")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"Label names file {path} is not valid JSON: {error}.") from error
    return validate_label_names(names, str(path))


def validate_label_names(names: dict, source: str = "label names") -> dict[str, int]:
    """Check a {name: value} mapping and add ``"background": 0`` when no name has value 0."""
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{source}: expected a JSON object mapping names to integer labels, got {names!r}.")
    checked: dict[str, int] = {}
    for name, value in names.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise ValueError(f"{source}: label {name!r} has value {value!r}; use an integer from 0 to 255.")
        checked[str(name)] = value
    if sorted(checked.values()) != sorted(set(checked.values())):
        raise ValueError(f"{source}: two names share a value in {checked}; give each label its own value.")
    if checked.get("background", 0) != 0:
        raise ValueError(f"{source}: 'background' must be 0, got {checked['background']}; give it value 0.")
    if 0 not in checked.values():
        checked = {"background": 0, **checked}
    return checked
