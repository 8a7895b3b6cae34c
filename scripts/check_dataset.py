"""Check a dataset on disk: images and masks per split, missing or unreadable files, size mismatches,
label values, and the class pixel histogram. Exits 1 with the list of problems if there are any.

    python scripts/check_dataset.py --config rca/configs/camvid.yaml --set data.root=../shared/data/camvid
    python scripts/check_dataset.py --name coco --root ../shared/data/coco_mini --split train2017 \
        --option skip_empty=true

With ``--config`` the splits checked are ``data.train_split`` and ``data.val_split`` (``--split``
replaces them) with ``data.options``; ``--option key=value`` (value parsed as YAML) adds or replaces
dataset options either way.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from rca.cli import make_parser, parse_command_line
from rca.config import add_override_arg, load_config
from rca.errors import add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``--option`` assignments come back parsed, as the dict ``args.options``."""
    parser = make_parser(__doc__)
    parser.add_argument("--config", help="experiment YAML: dataset name, root, splits and options")
    add_override_arg(parser)
    parser.add_argument("--name", help="dataset name (without --config)")
    parser.add_argument("--root", help="dataset root (without --config, or to replace data.root)")
    parser.add_argument("--split", nargs="+", help="split(s) to check")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes reading the files")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N items of each split")
    add_debug_arg(parser)
    args = parse_command_line(parser, argv)
    if not args.config and not (args.name and args.split):
        parser.error("give --config FILE, or --name, --root and --split")
    args.options = {}
    for assignment in args.option:
        key, sep, value = assignment.partition("=")
        if not sep:
            parser.error(f"--option {assignment!r}: expected key=value")
        args.options[key] = yaml.safe_load(value)
    return args


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.data import build_dataset
from rca.data.check import check_split, format_report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.config:
        data = load_config(args.config, args.overrides).data
        name, root, options = data.name, data.root, dict(data.options)
        splits = [split for split in (data.train_split, data.val_split) if split is not None]
    else:
        name, root, options, splits = args.name, args.root, {}, []
    root = args.root or root
    splits = args.split or splits
    options.update(args.options)

    problems = []
    for split in dict.fromkeys(splits):  # each split once, in order
        try:
            dataset = build_dataset(name, root, split, **options)
        except (OSError, ValueError, TypeError) as error:
            problems.append(f"split {split}: cannot open the dataset: {error}")
            print(f"split {split}: cannot open the dataset")
            continue
        report = check_split(dataset, split, workers=args.workers, limit=args.limit)
        print(format_report(report, dataset.class_names))
        problems += [f"split {split}: {problem}" for problem in report.problems]
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("\nno problems found")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
