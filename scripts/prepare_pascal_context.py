"""Convert PASCAL-Context's official 459-class labels into 60-class PNGs and the train/val lists.

    python scripts/prepare_pascal_context.py --voc2010 data/VOCdevkit/VOC2010 --labels data/trainval [--workers 8]

See :mod:`rca.data.prepare.pascal_context` for the inputs and outputs.
"""

from __future__ import annotations

import argparse
import sys

from rca.data.prepare.pascal_context import prepare_pascal_context
from rca.errors import add_debug_arg, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc2010", required=True, help="the VOC2010 folder (or one holding VOCdevkit/VOC2010)")
    parser.add_argument("--labels", required=True, help="the trainval/ folder of trainval.tar.gz (<id>.mat files)")
    parser.add_argument("--workers", type=int, default=1, help="processes converting label maps")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    counts = prepare_pascal_context(args.voc2010, args.labels, overwrite=args.overwrite, workers=args.workers)
    print(f"train: {counts['train']} ids, val: {counts['val']} ids; {counts['written']} PNGs written now")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
