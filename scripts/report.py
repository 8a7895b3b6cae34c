"""Write ``DIR/report.html`` and ``DIR/report.md`` for the work dir of a run (see :mod:`rca.report`).

    python scripts/report.py runs/<exp> [--max-panels N]
"""

from __future__ import annotations

import argparse
import sys

from rca.cli import make_parser, parse_command_line
from rca.errors import add_debug_arg, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("work_dir", help="the work dir of a run, e.g. runs/demo")
    parser.add_argument("--max-panels", type=int, default=8,
                        help="sample panels and predictions shown, each (default 8)")
    add_debug_arg(parser)
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    parse_args()  # --help and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.report import write_report


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = write_report(args.work_dir, args.max_panels)
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
