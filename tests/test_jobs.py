"""The job log set-up: hats' expected "_metadata file does not exist." warning is dropped, nothing else.

End to end (the commit logs of a bootstrap and a daily): tests/test_workflow.py::test_bootstrap_dailies_weekly.
"""

from __future__ import annotations

import logging

import hats.io.validation

from ppdb_lc.jobs import ExpectedHatsWarnings


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
