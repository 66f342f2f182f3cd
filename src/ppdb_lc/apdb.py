"""The APDB table schemas of the PPDB parquet export.

The column list is ``data/apdb_schema.json`` (sdm_schemas ``apdb.yaml``, ApdbSchema 10.0.0). The export writes
every APDB column of the *deployed* schema version plus ``apdb_replica_chunk``; every parquet field is nullable.
Files written under APDB 9.x lack the four DiaSource columns added in 10.0.0; the catalog always carries the full
10.0.0 column set, so older rows simply hold nulls there (schema evolution, see ``docs/design.md``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Dataset = Literal["DiaObject", "DiaSource", "DiaForcedSource"]
DATASETS: Final[tuple[Dataset, ...]] = ("DiaObject", "DiaSource", "DiaForcedSource")
REPLICA_CHUNK_COLUMN: Final = "apdb_replica_chunk"
LATEST_SCHEMA_VERSION: Final = "10.0.0"

#: Columns the pipeline cannot work without; a file lacking one is rejected.
REQUIRED_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "DiaObject": ("diaObjectId", "validityStartMjdTai", "ra", "dec"),
    "DiaSource": ("diaSourceId", "diaObjectId", "midpointMjdTai", "ra", "dec"),
    "DiaForcedSource": ("diaForcedSourceId", "diaObjectId", "midpointMjdTai", "ra", "dec"),
}

#: Key of a measurement row: a re-emitted copy repeats it, update records name their target by it (apdb.yaml primary
#: keys; DiaObject rows are versions, keyed by ``diaObjectId`` + ``validityStartMjdTai``).
ROW_KEY: Final[dict[str, tuple[str, ...]]] = {
    "DiaSource": ("diaSourceId",),
    "DiaForcedSource": ("diaObjectId", "visit", "detector"),
}

_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "float": pa.float32(),
    "float32": pa.float32(),
    "double": pa.float64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "timestamp[ms, UTC]": pa.timestamp("ms", tz="UTC"),
}


@cache
def _schema_json() -> dict:
    text = resources.files("ppdb_lc").joinpath("data/apdb_schema.json").read_text()
    return json.loads(text)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def columns(table: str, schema_version: str = LATEST_SCHEMA_VERSION) -> list[dict]:
    """Column descriptions of ``table`` as exported under ``schema_version`` (no export-only columns)."""
    if table not in DATASETS:
        raise KeyError(f"unknown APDB table {table!r}; expected one of {', '.join(DATASETS)}")
    wanted = _version_tuple(schema_version)
    return [
        col
        for col in _schema_json()[table]["columns"]
        if _version_tuple(col.get("since_apdb_schema", "0")) <= wanted
    ]


def arrow_type(col: dict) -> pa.DataType:
    """The arrow type the export writes for one column description."""
    try:
        return _ARROW_TYPES[col["arrow_type"]]
    except KeyError as err:
        raise ValueError(f"unsupported arrow type {col['arrow_type']!r} for column {col['name']}") from err


@cache
def export_schema(table: str, schema_version: str = LATEST_SCHEMA_VERSION) -> pa.Schema:
    """Arrow schema of the export files of ``table``: APDB columns + ``apdb_replica_chunk``, all nullable."""
    fields = [pa.field(col["name"], arrow_type(col), nullable=True) for col in columns(table, schema_version)]
    fields.append(pa.field(REPLICA_CHUNK_COLUMN, pa.int64(), nullable=True))
    return pa.schema(fields)


def flux_columns(table: str) -> list[str]:
    """nJy flux columns that get AB magnitudes: ``<band>_scienceFluxMean`` (objects), ``scienceFlux`` (sources)."""
    names = [col["name"] for col in columns(table)]
    if table == "DiaObject":
        return [name for name in names if name.endswith("_scienceFluxMean")]
    return [name for name in names if name == "scienceFlux"]


def id_buckets(ids: pa.Array | pa.ChunkedArray | np.ndarray, buckets: int) -> np.ndarray:
    """Bucket ``0..buckets-1`` of each id (a Fibonacci hash, so consecutive ids spread evenly); null: 0. The one
    hash of the pipeline: ingest shards by ``diaObjectId``, record buckets by target key."""
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    if isinstance(ids, np.ndarray):
        valid, values = np.ones(len(ids), dtype=bool), ids.astype(np.int64)
    else:
        valid = pc.is_valid(ids).to_numpy(zero_copy_only=False)
        values = pc.fill_null(ids, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    mixed = (values.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return np.where(valid, (mixed % np.uint64(buckets)).astype(np.int64), 0)
