"""Pipeline settings: the validated Snakemake config, typed.

Defaults: ``config/schema.yaml`` is the one source users read (Snakemake's ``validate`` fills its defaults into
the config). The defaults below (dataclass fields, used by :meth:`Settings.from_config` for missing keys, e.g. a
config built by hand) mirror it; ``tests/test_processing.py::test_settings_defaults_match_schema`` fails if they
drift apart, or if ``config/config.yaml`` sets a value other than the schema default without being listed there
as a deliberate demo setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

_DAYOBS = re.compile(r"^\d{4}-\d{2}-\d{2}$")

@dataclass(frozen=True)
class CollectionNames:
    """Names of the collection's sub-catalogs."""

    catalog: str = "dia_object_lc"
    margin_arcsec: float = 10.0
    index_column: str = "diaObjectId"

    @property
    def margin(self) -> str:
        return f"{self.catalog}_{int(self.margin_arcsec)}arcs"

    @property
    def index(self) -> str:
        return f"{self.catalog}_{self.index_column}"


def parse_until(value: Any) -> str | None:
    """The ``until`` setting: ``None`` for no limit (``all``, empty or missing), else a real ``YYYY-MM-DD`` dayobs.

    The schema only checks the shape, so ``2026-13-45`` would pass it and then never compare as intended: it is
    rejected here, naming the key and the value.
    """
    if value is None or value in ("", "all"):
        return None
    text = value.isoformat() if isinstance(value, date) else str(value)
    try:
        if not _DAYOBS.match(text):
            raise ValueError("not in YYYY-MM-DD form")
        return date.fromisoformat(text).isoformat()
    except ValueError as err:
        raise ValueError(f"config until={text!r} is not a valid date (expected YYYY-MM-DD or 'all'): {err}") from None


#: Columns kept float64 besides every ``*MjdTai`` column: positions and their errors, pixel coordinates.
DEFAULT_KEEP_FLOAT64: tuple[str, ...] = ("ra", "dec", "raErr", "decErr", "x", "y", "xErr", "yErr", "trailRa", "trailDec")


@dataclass(frozen=True)
class Settings:
    """Everything the library needs from the config (see ``config/schema.yaml`` for meanings)."""

    ppdb_dir: Path
    collection_dir: Path
    work_dir: Path
    until: str | None = None
    names: CollectionNames = field(default_factory=CollectionNames)
    pixel_threshold: int = 1_000_000
    highest_healpix_order: int = 8
    skymap_alt_orders: tuple[int, ...] = (2, 4, 6)
    keep_float64: tuple[str, ...] = DEFAULT_KEEP_FLOAT64
    keep_versions: int = 2
    validate_commits: bool = True
    on_invalid_chunk: str = "error"
    rows_per_stage_job: int = 500_000
    rows_per_ingest_job: int = 500_000
    weekly_mode: str = "incremental"  #: ``incremental`` (rewrite the changed pixel groups) or ``full``
    weekly_shards: int = 4  #: at most this many parallel pixel-group jobs per incremental weekly
    weekly_full_above: float = 0.8  #: fall back to the full weekly above this fraction of rows to rewrite

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        catalog = config.get("catalog", {})
        names, defaults = CollectionNames(), cls(Path(), Path(), Path())
        return cls(
            ppdb_dir=Path(config["ppdb_dir"]),
            collection_dir=Path(config["collection_dir"]),
            work_dir=Path(config["work_dir"]),
            until=parse_until(config.get("until")),
            names=CollectionNames(
                catalog=catalog.get("name", names.catalog),
                margin_arcsec=float(catalog.get("margin_threshold_arcsec", names.margin_arcsec)),
            ),
            pixel_threshold=int(catalog.get("pixel_threshold", defaults.pixel_threshold)),
            highest_healpix_order=int(catalog.get("highest_healpix_order", defaults.highest_healpix_order)),
            skymap_alt_orders=tuple(catalog.get("skymap_alt_orders", defaults.skymap_alt_orders)),
            keep_float64=tuple(catalog.get("keep_float64", defaults.keep_float64)),
            keep_versions=int(config.get("keep_versions", defaults.keep_versions)),
            validate_commits=bool(config.get("validate_commits", defaults.validate_commits)),
            on_invalid_chunk=str(config.get("on_invalid_chunk", defaults.on_invalid_chunk)),
            rows_per_stage_job=int(config.get("sharding", {}).get("rows_per_stage_job", defaults.rows_per_stage_job)),
            rows_per_ingest_job=int(config.get("sharding", {}).get("rows_per_ingest_job",
                                                                   defaults.rows_per_ingest_job)),
            weekly_mode=str(config.get("weekly", {}).get("mode", defaults.weekly_mode)),
            weekly_shards=int(config.get("weekly", {}).get("shards", defaults.weekly_shards)),
            weekly_full_above=float(config.get("weekly", {}).get("full_above", defaults.weekly_full_above)),
        )
