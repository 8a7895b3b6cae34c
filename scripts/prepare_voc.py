"""Build VOC 2012's SegmentationClassAug (from SBD), train_aug.txt and cls_labels.npy.

    python scripts/prepare_voc.py --voc data/VOCdevkit/VOC2012 --sbd data/benchmark_RELEASE [--processes 8]

See :mod:`rca.data.prepare.voc` for the inputs (VOC trainval tar, SBD benchmark.tgz; fetch them with
scripts/download_voc.sh) and the outputs.
"""

from __future__ import annotations

import argparse
import sys

from rca.cli import make_parser, parse_command_line
from rca.errors import add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--voc", required=True, help="the VOC2012 folder (or one holding VOCdevkit/VOC2012)")
    parser.add_argument("--sbd", required=True, help="SBD's benchmark_RELEASE folder (or its dataset/ folder)")
    parser.add_argument("--processes", type=int, default=1, metavar="N", help="processes converting masks")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_debug_arg(parser)
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.data.prepare.voc import prepare_voc


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = prepare_voc(args.voc, args.sbd, overwrite=args.overwrite, workers=args.processes)
    print(
        f"SegmentationClassAug: {counts['masks']} masks ({counts['written']} written now); "
        f"train_aug.txt: {counts['train_aug']} ids; cls_labels.npy: {counts['cls_labels']} ids"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
