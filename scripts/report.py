"""Write ``DIR/report.html`` and ``DIR/report.md`` for the work dir of a run (see :mod:`rca.report`).

    python scripts/report.py runs/<exp> [--max-panels N]
"""

from __future__ import annotations

import argparse
import sys

from rca.report import write_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", help="the work dir of a run, e.g. runs/demo")
    parser.add_argument("--max-panels", type=int, default=8,
                        help="sample panels and predictions shown, each (default 8)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.work_dir, args.max_panels)
    except FileNotFoundError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
