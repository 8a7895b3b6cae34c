"""Write COCO's 81-class label PNGs and image-level label file for one or more splits.

    python scripts/prepare_coco.py --root data/coco --split train2014 val2014 [--processes 8]

Outputs ``<root>/SegmentationClass/<split>/<stem>.png`` and ``<root>/cls_labels_<split>.npy`` (see
:mod:`rca.data.prepare.coco`); read them with ``data.options.masks: SegmentationClass``.
"""

from __future__ import annotations

import argparse
import sys

from rca.cli import make_parser, parse_command_line
from rca.errors import add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--root", required=True, help="COCO folder holding annotations/instances_<split>.json")
    parser.add_argument("--split", nargs="+", required=True, help="e.g. train2014 val2014 or train2017 val2017")
    parser.add_argument("--processes", type=int, default=1, metavar="N", help="processes rasterising masks")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_debug_arg(parser)
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.data.prepare.coco import prepare_coco


def main(argv=None) -> int:
    args = parse_args(argv)
    for split in args.split:
        counts = prepare_coco(args.root, split, overwrite=args.overwrite, workers=args.processes)
        print(
            f"{split}: {counts['images']} images ({counts['with_annotations']} with at least one annotation, "
            f"the skip_empty split); {counts['written']} PNGs written now"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
