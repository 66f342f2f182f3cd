"""Named pause points for the crash-injection and concurrency tests (inactive unless the environment asks).

With ``PPDB_LC_PAUSE_AT=<point>`` and ``PPDB_LC_PAUSE_DIR=<dir>``, the process that reaches ``<point>`` writes
``<dir>/<point>`` (its pid) and waits until ``<dir>/<point>.continue`` exists. A test then SIGKILLs the run's
whole process group there (a crash at exactly that point) or lets it continue after doing something else
meanwhile (a run that overlaps another). Points: one at the start of every job (its rule name), and
``shard:written`` (a shard's rows written, its summary not yet), ``commit:written`` / ``weekly:written`` (new version's data written, not yet published), ``publish:renamed``
(version renamed into place, not yet switched to), ``publish:switched`` (switched, older versions not yet pruned).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "PPDB_LC_PAUSE_AT"
PAUSE_DIR = "PPDB_LC_PAUSE_DIR"


def point(name: str) -> None:
    if os.environ.get(PAUSE_AT) != name or not os.environ.get(PAUSE_DIR):
        return
    directory = Path(os.environ[PAUSE_DIR])
    (directory / name).write_text(str(os.getpid()))
    while not (directory / f"{name}.continue").exists():
        time.sleep(0.05)
