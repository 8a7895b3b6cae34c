"""Command lines of the stages and scripts: a parser that answers before torch is imported.

Importing torch, torchvision, timm and TensorBoard takes several seconds, and a user asking for
``--help``, making a typo in an option or asking for ``--print-config`` should not wait for it. So
every entry point (``stages/*.py``, ``scripts/*.py``) is laid out the same way:

1. a docstring, then light imports only: the standard library, this module and :mod:`rca.config`
   (argparse, PyYAML, NumPy and Pillow: none of them imports torch);
2. ``parse_args(argv)``, which builds the parser with :func:`make_parser` and parses with
   :func:`parse_command_line`;
3. ``if __name__ == "__main__": parse_args()``: run as a script, the command line is parsed here, so
   ``--help``, ``--print-config`` and argument errors answer and exit before the next step;
4. the heavy imports (torch and everything that imports it), then the script's functions and
   ``main(argv)``, which parses again (cheap) and does the work.

Imported as a module (``stages.train_cls.main(argv)``, as the tests do), step 3 does nothing and the
script behaves as any module. This module and :mod:`rca.config` must not import torch, directly or
through another module; ``tests/test_cli.py`` checks that for every entry point.
"""

from __future__ import annotations

import argparse
import re

from rca.config import ConfigError, format_config, load_config

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")  # :func:`rca.x.f`, :mod:`~rca.x`
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(doc: str) -> str:
    """A reST docstring as plain text for a terminal: ``:func:`a.b``` -> ``a.b`` (``~a.b`` -> ``b``),
    double-backquoted literals without their backquotes, a literal-block ``::`` -> ``:``.

    Example::

        plain_text("Writes ``x.pt`` (:func:`~rca.io.save_json`)::") == "Writes x.pt (save_json):"
    """
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), doc)
    text = _LITERAL.sub(r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


def make_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose description is the script's docstring ``doc`` as plain text, with its
    line breaks and indentation kept (usage examples, lists)."""
    return argparse.ArgumentParser(description=plain_text(doc), formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then answer ``--print-config`` if it is given.

    ``--print-config`` (added by :func:`rca.config.add_config_args`) prints the resolved config
    (defaults + ``--config`` file + ``--set`` overrides) as YAML and exits with status 0. It checks
    every key's type, range and choices and the rules between keys, but not the names looked up in
    registries (``data.name``, ``data.options``, backbones, output strides): those need torch and are
    checked when the stage runs. A bad file or override exits with status 2 and the message, as any
    argument error does.
    """
    args = parser.parse_args(argv)
    if getattr(args, "print_config", False):
        try:
            config = load_config(args.config, args.overrides, check_registries=False)
        except (ConfigError, FileNotFoundError) as error:
            parser.error(str(error))
        print(format_config(config), end="")
        parser.exit(0)
    return args
