"""Status lines for steps that take more than a few seconds, so that a long command never sits silent.

Lines go to stderr (stdout keeps the results a command prints) through ``tqdm.write``, which redraws an
open progress bar below them instead of breaking it.
"""

from __future__ import annotations

import sys


def say(line: str, enabled: bool = True) -> None:
    """Print ``line`` on stderr when ``enabled`` (library calls pass their ``progress`` flag)."""
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
