"""The ``airlock`` command's entry point: Ctrl-C at any moment ends it without a traceback.

The console script calls :func:`main` here, which imports the command line only then, so that
an interrupt that lands while Python is still importing it is handled too.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from airlock.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    cli_main()
