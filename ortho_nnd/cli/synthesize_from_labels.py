"""ortho_synthesize_from_labels: render random-contrast three-view exams from 3D label maps."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ortho_nnd.paths import raw_folder
from ortho_nnd.phantom.grid import VIEWS
from ortho_nnd.synthesis.dataset import synthesize_dataset
from ortho_nnd.synthesis.labels import load_label_names


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Invalid range {text!r}; write two numbers as LOW,HIGH.") from error
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"Invalid range {text!r}; need 0 < LOW <= HIGH.")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortho_synthesize_from_labels",
        description="Render synthetic sagittal, coronal and axial exams with random contrasts from 3D label "
                    "maps and write them, with their labels, as raw dataset DatasetXXX_NAME.",
    )
    parser.add_argument("-i", "--input", nargs="+", type=Path, required=True,
                        help="label map files, or folders that contain them")
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="dataset id of the output")
    parser.add_argument("--name", required=True, help="dataset name, e.g. KneeSynth")
    parser.add_argument("--exams_per_map", type=int, default=4, help="exams rendered per label map (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--views", default=",".join(VIEWS),
                        help="comma-separated views to render (default sagittal,coronal,axial)")
    parser.add_argument("--label_names", type=Path, default=None,
                        help="JSON file mapping label names to values (default: the knee labels 1 femoral "
                             "cartilage, 2 medial tibial cartilage, 3 lateral tibial cartilage, 4 patellar "
                             "cartilage, 5 femur, 6 tibia, 7 patella, 8 fibula, 9 lateral meniscus, "
                             "10 medial meniscus)")
    parser.add_argument("--in_plane_spacing", type=_range, default=(0.3, 0.6),
                        help="range of in-plane spacing in mm, LOW,HIGH (default 0.3,0.6)")
    parser.add_argument("--slice_thickness", type=_range, default=(3.0, 4.0),
                        help="range of slice thickness in mm, LOW,HIGH (default 3,4)")
    parser.add_argument("-o", "--output_folder", type=Path, default=None,
                        help="raw folder to write into (default: $ORTHO_raw)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    views = tuple(view.strip() for view in args.views.split(",") if view.strip())
    dataset_folder = synthesize_dataset(
        args.input,
        args.output_folder if args.output_folder is not None else raw_folder(),
        dataset_id=args.dataset_id,
        name=args.name,
        exams_per_map=args.exams_per_map,
        seed=args.seed,
        views=views,
        label_names=load_label_names(args.label_names),
        in_plane_spacing_range=args.in_plane_spacing,
        slice_thickness_range=args.slice_thickness,
    )
    print(dataset_folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
