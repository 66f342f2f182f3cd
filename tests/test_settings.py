"""Settings read from the config: the ``until`` limit is a real date or no limit."""

from __future__ import annotations

import datetime as dt

import pytest

from ppdb_lc.cli import main
from ppdb_lc.settings import Settings, parse_until

BASE = {"ppdb_dir": "p", "collection_dir": "c", "work_dir": "w"}


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-11-20", "2026-11-20"),
    ("2028-02-29", "2028-02-29"),
    (dt.date(2026, 1, 2), "2026-01-02"),  # `--config until=2026-01-02` arrives as a YAML date
    ("all", None),
    ("", None),
    (None, None),
])
def test_until_accepted(value: object, expected: str | None) -> None:
    assert parse_until(value) == expected
    assert Settings.from_config({**BASE, "until": value}).until == expected


@pytest.mark.parametrize("value", ["2026-13-45", "2026-02-30", "2027-02-29", "20261120", "2026-1-5", "yesterday"])
def test_until_rejected_naming_key_and_value(value: str) -> None:
    with pytest.raises(ValueError, match=rf"until='{value}' is not a valid date"):
        Settings.from_config({**BASE, "until": value})


def test_until_missing_means_no_limit() -> None:
    assert Settings.from_config(BASE).until is None


def test_cli_preview_refuses_bad_until(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("ppdb_dir: p\ncollection_dir: c\nwork_dir: w\n")
    assert main(["preview", "--config", str(config), "--set", "until=2026-13-45"]) == 2
    assert "until='2026-13-45' is not a valid date" in capsys.readouterr().err
