"""The `fdl` console script's first code: quiet on Ctrl-C from the first instant.

`import fdl` imports JAX, which takes seconds. A SIGINT or SIGTERM in that window would
raise inside some import (a long traceback), be swallowed by a JAX callback, or stop a
half-initialised extension. This module lives outside the `fdl` package, so it runs
before any of it is imported: it ends the process at once with one line and the
conventional status (130 for Ctrl-C, 143 for SIGTERM) until `fdl.cli` is loaded and
takes over signal handling (a run then stops at an epoch boundary and saves).
"""

from __future__ import annotations

import os
import signal
import sys


def _quit(signum: int, frame: object) -> None:
    os.write(2, b"interrupted\n")
    os._exit(128 + signum)


def main() -> int:
    """Install the quiet handlers, load `fdl.cli`, restore the defaults, run it."""
    previous = {s: signal.signal(s, _quit) for s in (signal.SIGINT, signal.SIGTERM)}
    from fdl.cli import main as run

    for s, handler in previous.items():
        signal.signal(s, handler)
    return run()


if __name__ == "__main__":
    sys.exit(main())
