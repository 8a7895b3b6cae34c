"""Write ``DIR/report.html`` and ``DIR/report.md`` for the work dir of a run (see :mod:`rca.report`).

    python scripts/report.py runs/<exp> [--max-panels N]
"""

from __future__ import annotations

import argparse
import sys

from rca.errors import add_debug_arg, run_cli
from rca.report import write_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", help="the work dir of a run, e.g. runs/demo")
    parser.add_argument("--max-panels", type=int, default=8,
                        help="sample panels and predictions shown, each (default 8)")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    paths = write_report(args.work_dir, args.max_panels)
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
