"""The ``airlock`` command's entry point: Ctrl-C at any moment ends it without a traceback.

The console script calls :func:`main` here, which imports the command line only then, so that
an interrupt that lands while Python is still importing it is handled too. Once the command is
done, Ctrl-C gets its default action back: one that lands while the interpreter shuts down
(Python would print "Exception ignored in: <module 'threading'>" and a traceback) ends the
process by the signal instead.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        try:
            from airlock.cli import main as cli_main
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        cli_main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
