"""User errors: what an entry point reports in one line with exit status 2, and what is a bug.

A *user error* is a problem that the person running the pipeline fixes from the message alone: a
missing or unreadable file, a bad config key or value, a checkpoint of the wrong kind, an empty
split, a mask that does not fit its image or holds values outside the class range, a loss that
went non-finite. The library raises them as :class:`UserError` subclasses, each of which keeps a
builtin base (``ValueError`` or ``RuntimeError``) so that ``except ValueError`` clauses still catch
them. An operating-system error about a path (:data:`PATH_ERRORS`: a file that is not there, not
readable, a folder where a file was expected) counts as a user error too. Everything else is a bug
and keeps its traceback.

Every stage and script ends with ``sys.exit(run_cli(main))``: a user error prints
``error: <message>`` on stderr and exits with :data:`EXIT_REFUSED`; with ``--debug`` (every entry
point takes it, :func:`add_debug_arg`) the traceback is printed first. Under ``torchrun`` every rank
exits with that status, but only rank 0 prints the errors every rank meets alike (config, paths,
checkpoints); the errors of one rank's own data (:attr:`UserError.rank_local`: a bad image, a
non-finite loss) are printed by the rank that met them.

This module imports only the standard library, so entry points can use it before heavy imports.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

EXIT_REFUSED = 2
"""Exit status of an entry point that stops on a user error or refuses to touch a run (the status
argparse also uses for a bad command line)."""


class UserError(Exception):
    """An error the user fixes from its message, which names the file or config key and the fix.

    Attributes:
        rank_local: True when one distributed rank can meet it alone (its own share of the data);
            then that rank prints it. False: every rank meets it, rank 0 prints it.
    """

    rank_local = False


class DataError(UserError, ValueError):
    """A dataset, split or label file cannot be used as it is (e.g. an empty split, a bad class file)."""


class BadItemError(DataError):
    """One item of a dataset cannot be used: its image or mask file is missing, unreadable or
    truncated, or its mask does not fit the image or holds values outside the class range.

    The message names the file (or the item id). ``--skip-bad`` (:mod:`rca.data.skip`) skips such items.
    """

    rank_local = True


class CheckpointError(UserError, ValueError):
    """A checkpoint (or weights file) is corrupt, not a checkpoint, or of another kind than expected."""


class NonFiniteLossError(UserError, RuntimeError):
    """A training loss became NaN or infinite; the message names the term and the iteration."""

    rank_local = True


PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
"""Operating-system errors about a path that count as user errors."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is reported in one line (a :class:`UserError` or one of :data:`PATH_ERRORS`)."""
    return isinstance(error, (UserError, *PATH_ERRORS))


def error_message(error: BaseException) -> str:
    """The one-line message of ``error``.

    An error raised in a DataLoader worker comes back re-created with the worker's whole traceback
    as its message (``torch.utils.data``'s ``ExceptionWrapper``); its own message is the last line
    of that traceback, after ``module.ClassName: ``. Any remaining line breaks become spaces.
    """
    text = str(error)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def add_debug_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (read by :func:`run_cli`) to an entry point's parser."""
    parser.add_argument("--debug", action="store_true",
                        help="on an error in the input, also print the traceback (default: one line)")
    return parser


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's ``main(argv)`` and turn a user error into one line and :data:`EXIT_REFUSED`.

    Args:
        main: the entry point; parses ``argv`` (``None``: ``sys.argv[1:]``) and returns its exit status.
        argv: the arguments, as ``main`` takes them.

    Returns:
        ``main``'s status, or :data:`EXIT_REFUSED` after a user error (:func:`is_user_error`), whose
        message goes to stderr as ``error: <message>`` (rank 0 only, unless the error is
        rank-local), preceded by the traceback when the arguments hold ``--debug``. Any other
        exception propagates with its traceback (a bug).
    """
    try:
        return main(argv)
    except Exception as error:
        if not is_user_error(error):
            raise
        arguments = sys.argv[1:] if argv is None else list(argv)
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 or getattr(error, "rank_local", False):
            if "--debug" in arguments:
                traceback.print_exc()
            where = f" (rank {rank})" if rank else ""
            print(f"error{where}: {error_message(error)}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
