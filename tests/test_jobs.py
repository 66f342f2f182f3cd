"""The job log set-up: hats' expected "_metadata file does not exist." warning is dropped, nothing else.

End to end (the commit logs of a bootstrap and a daily): tests/test_workflow.py::test_bootstrap_dailies_weekly.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import hats.io.validation

from ppdb_lc.jobs import ExpectedHatsWarnings, peak_rss_mb


def record(message: str, *, level: int = logging.WARNING, pathname: str = hats.io.validation.__file__
           ) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 205, message, None, None)


def test_drops_only_the_expected_hats_warning() -> None:
    keep = ExpectedHatsWarnings().filter
    assert not keep(record("_metadata file does not exist."))
    assert keep(record("_common_metadata file does not exist."))
    assert keep(record("Partition pixels differ between catalog and _metadata file"))
    assert keep(record("_metadata file does not exist.", pathname=__file__))  # same words from elsewhere
    assert keep(record("_metadata file does not exist.", level=logging.ERROR))


def test_peak_rss_is_the_jobs_own_not_the_parents() -> None:
    """A job started by a large process (Snakemake, having planned a big export) reports its own peak. getrusage's
    ru_maxrss would report the parent's size at the fork: Linux keeps it over exec."""
    parent = bytearray(400 * 1024**2)  # 400 MB, touched: resident in this (parent) process
    parent[::4096] = b"x" * len(parent[::4096])
    assert peak_rss_mb() > 400
    code = ("import resource; from ppdb_lc.jobs import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    del parent
    assert own < 150, own  # the interpreter and ppdb_lc.jobs: tens of MB
    assert inherited > own  # what ru_maxrss says instead (parent-sized where fork copies the page tables)
