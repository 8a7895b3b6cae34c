"""The pipeline's entry points, one script per step (see the README and DESIGN.md).

Each runs as ``python stages/<name>.py --config ...`` and is importable as ``stages.<name>`` with a
``main(argv) -> exit status`` (the tests call it so). The logic they share or that a test needs
lives in the library, :mod:`rca`. Each parses its command line before importing torch, so that
``--help`` and ``--print-config`` answer at once; the layout this takes is described in :mod:`rca.cli`.
"""
