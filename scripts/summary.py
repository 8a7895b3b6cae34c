"""Print the pipeline's headline numbers and write the experiment's report (``DIR/report.html``, ``.md``).

    python scripts/summary.py --config rca/configs/<exp>.yaml [--set ...] [--work-dir DIR]

The table is :func:`rca.report.summary_rows` of the three stages' ``metrics.json``; the report is
:func:`rca.report.write_report`.
"""

from __future__ import annotations

import argparse
import sys

from rca.cli import make_parser, parse_command_line
from rca.config import add_config_args, config_from_args
from rca.errors import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    return parse_command_line(add_config_args(make_parser(__doc__)), argv)


if __name__ == "__main__":
    parse_args()  # --help, --print-config and argument errors answer here, before the heavy imports below (rca/cli.py)

from rca.report import read_run, summary_rows, write_report


def main(argv=None) -> int:
    config, work_dir = config_from_args(parse_args(argv))
    print(f"summary of {work_dir} (config {config.name})")
    for name, value, note in summary_rows(read_run(work_dir)):
        shown = "n/a" if value is None else f"{value:6.2f}"
        print(f"  {name:<28} {shown:>6}  {note}".rstrip())
    for path in write_report(work_dir):
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
