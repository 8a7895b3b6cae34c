"""Build VOC 2012's SegmentationClassAug (from SBD), train_aug.txt and cls_labels.npy.

    python scripts/prepare_voc.py --voc data/VOCdevkit/VOC2012 --sbd data/benchmark_RELEASE [--workers 8]

See :mod:`rca.data.prepare.voc` for the inputs (VOC trainval tar, SBD benchmark.tgz; fetch them with
scripts/download_voc.sh) and the outputs.
"""

from __future__ import annotations

import argparse
import sys

from rca.data.prepare.voc import prepare_voc
from rca.errors import add_debug_arg, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", required=True, help="the VOC2012 folder (or one holding VOCdevkit/VOC2012)")
    parser.add_argument("--sbd", required=True, help="SBD's benchmark_RELEASE folder (or its dataset/ folder)")
    parser.add_argument("--workers", type=int, default=1, help="processes converting masks")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    counts = prepare_voc(args.voc, args.sbd, overwrite=args.overwrite, workers=args.workers)
    print(
        f"SegmentationClassAug: {counts['masks']} masks ({counts['written']} written now); "
        f"train_aug.txt: {counts['train_aug']} ids; cls_labels.npy: {counts['cls_labels']} ids"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
