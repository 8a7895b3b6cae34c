"""Convert PASCAL-Context's official 459-class labels into 60-class PNGs and the train/val lists.

    python scripts/prepare_pascal_context.py --voc2010 data/VOCdevkit/VOC2010 --labels data/trainval [--processes 8]

See :mod:`rca.data.prepare.pascal_context` for the inputs and outputs.
"""

from __future__ import annotations

import argparse
import sys

from rca.cli import make_parser, parse_command_line
from rca.errors import add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--voc2010", required=True, help="the VOC2010 folder (or one holding VOCdevkit/VOC2010)")
    parser.add_argument("--labels", required=True, help="the trainval/ folder of trainval.tar.gz (<id>.mat files)")
    parser.add_argument("--processes", type=int, default=1, metavar="N", help="processes converting label maps")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_debug_arg(parser)
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.data.prepare.pascal_context import prepare_pascal_context


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = prepare_pascal_context(args.voc2010, args.labels, overwrite=args.overwrite, workers=args.processes)
    print(f"train: {counts['train']} ids, val: {counts['val']} ids; {counts['written']} PNGs written now")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
