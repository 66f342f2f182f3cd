"""PPDB update records: read, check, order, reduce to their net effect, and apply to flat export tables.

The export is a change log (``shared/docs/update_records.md``). A chunk may carry update records in
``updates.parquet`` (earlier names ``update_records.parquet`` and ``update_records.json``): one row per record with
``apdb_replica_chunk``, ``update_time_ns``, ``update_order`` and a ``json_payload`` holding ``update_type`` plus the
fields of dax_apdb's record dataclass. Six types exist (:data:`RECORD_TYPES`); each targets one row of one table by
its key and sets some of its fields to absolute values, so replaying a record is harmless.

The PPDB applies records in the order (``apdb_replica_chunk``, ``update_time_ns``, ``update_order``) after the rows
of their batch, and the last write wins per (table, key, field). :func:`reduce` turns any set of records into that
net effect (:class:`Effects`), which is then applied wherever the target rows live: in a night's flat tables
(:func:`apply_to_sources` and friends, also used by bootstrap) or in committed pixel files (:mod:`ppdb_lc.revise`).

DiaObject rows are versions. A record on a DiaObject changes the object *as of its chunk*: it applies to every
version row from a chunk up to the record's (and, for ``validityEndMjdTai``, to rows without a version: orphan
rows), never to a version from a later chunk, which supersedes it. After folding, the object's latest row carries
the value exactly when the PPDB's latest version does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ppdb_lc import apdb

log = logging.getLogger(__name__)

#: File names of update records in a chunk directory, newest name first.
UPDATE_FILES: tuple[str, ...] = ("updates.parquet", "update_records.parquet", "update_records.json")
ORDER_COLUMNS: tuple[str, ...] = ("apdb_replica_chunk", "update_time_ns", "update_order")


class BadUpdateError(ValueError):
    """An update record that cannot be applied: malformed payload, unknown type, missing or mistyped field."""


@dataclass(frozen=True)
class RecordType:
    """One ``update_type``: the table and key of its target row and the fields it sets."""

    name: str
    table: str
    key: tuple[str, ...]
    sets: tuple[str, ...]
    #: fields set only when the payload value is not null (``nDiaSources`` of a close record)
    sets_if_given: tuple[str, ...] = ()
    #: fields set to null (the SQL PPDB nulls ``diaObjectId`` of a source reassigned to an SSObject)
    clears: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        locate = ("ra", "dec", "midpointMjdTai") if self.table != "DiaObject" else ("ra", "dec")
        return (*self.key, *self.sets, *locate)


RECORD_TYPES: dict[str, RecordType] = {
    t.name: t
    for t in (
        RecordType("reassign_diasource_to_diaobject", "DiaSource", ("diaSourceId",), ("diaObjectId",)),
        RecordType("reassign_diasource_to_ssobject", "DiaSource", ("diaSourceId",),
                   ("ssObjectId", "ssObjectReassocTimeMjdTai"), clears=("diaObjectId",)),
        RecordType("withdraw_diasource", "DiaSource", ("diaSourceId",), ("timeWithdrawnMjdTai",)),
        RecordType("withdraw_diaforcedsource", "DiaForcedSource", ("diaObjectId", "visit", "detector"),
                   ("timeWithdrawnMjdTai",)),
        RecordType("close_diaobject_validity", "DiaObject", ("diaObjectId",), ("validityEndMjdTai",),
                   sets_if_given=("nDiaSources",)),
        RecordType("update_n_dia_sources", "DiaObject", ("diaObjectId",), ("nDiaSources",)),
    )
}

_INT_FIELDS = {"diaSourceId", "diaObjectId", "visit", "detector", "ssObjectId", "nDiaSources"}
#: The normalized record table: order columns, type, and one typed column per payload field.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("apdb_replica_chunk", pa.int64()),
        pa.field("update_time_ns", pa.int64()),
        pa.field("update_order", pa.int64()),
        pa.field("update_type", pa.string()),
        pa.field("diaSourceId", pa.int64()),
        pa.field("diaObjectId", pa.int64()),
        pa.field("visit", pa.int64()),
        pa.field("detector", pa.int16()),
        pa.field("ssObjectId", pa.int64()),
        pa.field("ssObjectReassocTimeMjdTai", pa.float64()),
        pa.field("timeWithdrawnMjdTai", pa.float64()),
        pa.field("validityEndMjdTai", pa.float64()),
        pa.field("nDiaSources", pa.int32()),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("midpointMjdTai", pa.float64()),
    ]
)
PAYLOAD_FIELDS: tuple[str, ...] = tuple(RECORD_SCHEMA.names[4:])


def empty_records() -> pa.Table:
    return RECORD_SCHEMA.empty_table()


# -- reading ---------------------------------------------------------------------------------------------------
def _raw_rows(path: Path, data: bytes | None = None) -> pa.Table:
    """The four transport columns of an update file (parquet, or the early JSON list of row objects)."""
    if path.suffix == ".json":
        try:
            rows = json.loads(data if data is not None else path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            raise BadUpdateError(f"{path}: not valid JSON ({err})") from err
        if isinstance(rows, dict):
            rows = rows.get("records", rows.get("updates"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadUpdateError(f"{path}: expected a JSON list of update records")
        for r in rows:  # the payload may be a nested object instead of a JSON string
            if isinstance(r.get("json_payload"), dict):
                r["json_payload"] = json.dumps(r["json_payload"])
        columns = {name: [r.get(name) for r in rows] for name in (*ORDER_COLUMNS, "json_payload")}
        try:
            return pa.table({name: pa.array(values, type=pa.string() if name == "json_payload" else pa.int64())
                             for name, values in columns.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise BadUpdateError(f"{path}: bad column types ({err})") from err
    try:
        source = pa.BufferReader(data) if data is not None else path
        table = pq.read_table(source)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise BadUpdateError(f"{path}: unreadable parquet ({err})") from err
    missing = [c for c in (*ORDER_COLUMNS, "json_payload") if c not in table.column_names]
    if missing:
        raise BadUpdateError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _typed(name: str, value: object, where: str) -> object:
    if value is None:
        return None
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise BadUpdateError(f"{where}: field {name} must be an integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadUpdateError(f"{where}: field {name} must be a number, got {value!r}")
    return float(value)


#: Records parsed at once: a parsed JSON payload takes ~1 KB as Python objects, the normalized record ~140 bytes.
PARSE_RECORDS = 50_000


def parse_records(raw: pa.Table, where: str) -> pa.Table:
    """Normalize transport rows into :data:`RECORD_SCHEMA`; raise :class:`BadUpdateError` naming the record.
    Parsed :data:`PARSE_RECORDS` at a time, so memory is the normalized records' (Arrow), not their Python form."""
    parts = [_parse_slice(raw.slice(start, PARSE_RECORDS), where, start)
             for start in range(0, raw.num_rows, PARSE_RECORDS)]
    return pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()


def _parse_slice(raw: pa.Table, where: str, offset: int) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    order = {name: raw[name].to_pylist() for name in ORDER_COLUMNS}
    for i, payload in enumerate(raw["json_payload"].to_pylist()):
        at = (f"{where} record {offset + i} (update_time_ns={order['update_time_ns'][i]}, "
              f"update_order={order['update_order'][i]})")
        if any(order[name][i] is None for name in ORDER_COLUMNS):
            raise BadUpdateError(f"{at}: null {'/'.join(ORDER_COLUMNS)}")
        try:
            data = json.loads(payload) if payload is not None else None
        except ValueError as err:
            raise BadUpdateError(f"{at}: json_payload is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise BadUpdateError(f"{at}: json_payload is not a JSON object")
        kind = data.get("update_type")
        if kind not in RECORD_TYPES:
            raise BadUpdateError(f"{at}: unknown update_type {kind!r} (known: {', '.join(RECORD_TYPES)})")
        spec = RECORD_TYPES[kind]
        missing = [name for name in spec.required if data.get(name) is None]
        if missing:
            raise BadUpdateError(f"{at}: {kind} lacks required field(s) {', '.join(missing)}")
        for name in ORDER_COLUMNS:
            columns[name].append(order[name][i])
        columns["update_type"].append(kind)
        for name in PAYLOAD_FIELDS:
            columns[name].append(_typed(name, data.get(name), at))
    try:
        return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in RECORD_SCHEMA}, schema=RECORD_SCHEMA)
    except (pa.ArrowInvalid, OverflowError) as err:
        raise BadUpdateError(f"{where}: value out of range ({err})") from err


def read_update_file(path: Path, data: bytes | None = None) -> pa.Table:
    """Normalized records of one update file (``data``: its bytes, when the caller already read them)."""
    return parse_records(_raw_rows(Path(path), data), str(path))


def iter_update_file(path: Path, data: bytes, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The records of one update file, :data:`PARSE_RECORDS` at a time: normalized, or with ``columns`` the raw
    transport columns only (a parquet file is read a batch at a time; the early JSON form is small, read whole)."""
    path = Path(path)
    if path.suffix == ".json":
        raw = _raw_rows(path, data)
        for start in range(0, raw.num_rows, PARSE_RECORDS):
            part = raw.slice(start, PARSE_RECORDS)
            yield part.select(list(columns)) if columns else _parse_slice(part, str(path), start)
        return
    try:
        handle = pq.ParquetFile(pa.BufferReader(data))
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise BadUpdateError(f"{path}: unreadable parquet ({err})") from err
    missing = [c for c in (*ORDER_COLUMNS, "json_payload") if c not in handle.schema_arrow.names]
    if missing:
        raise BadUpdateError(f"{path}: missing column(s) {', '.join(missing)}")
    start = 0
    for batch in handle.iter_batches(batch_size=PARSE_RECORDS, columns=list(columns) if columns else None):
        part = pa.Table.from_batches([batch])
        yield part if columns else _parse_slice(part, str(path), start)
        start += part.num_rows


def in_order_already(keys: Iterable[pa.Table]) -> bool:
    """Whether tables of :data:`ORDER_COLUMNS`, one after the other, are in the PPDB's order (non-decreasing; ties
    keep their place, as the stable sort of :func:`in_order` does)."""
    last: tuple | None = None
    for table in keys:
        if not table.num_rows:
            continue
        columns = [table[name].to_numpy(zero_copy_only=False) for name in ORDER_COLUMNS]
        if any(np.any(pd.isna(c)) for c in columns):
            return False  # parsing rejects null order columns: let it report them
        order = np.lexsort(columns[::-1])
        if np.any(order != np.arange(len(order))):
            return False
        first = tuple(int(c[0]) for c in columns)
        if last is not None and first < last:
            return False
        last = tuple(int(c[-1]) for c in columns)
    return True


def record_batches(path: Path, size: int) -> Iterator[pa.Table]:
    """The records of a file written with :data:`RECORD_SCHEMA`, ``size`` at a time, in file order."""
    handle = pq.ParquetFile(path)
    for batch in handle.iter_batches(batch_size=max(1, size)):
        yield pa.Table.from_batches([batch]).select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


def in_order(records: pa.Table) -> pa.Table:
    """Records in the PPDB's application order (stable for equal keys)."""
    if records.num_rows == 0:
        return records
    return records.take(pc.sort_indices(records, sort_keys=[(c, "ascending") for c in ORDER_COLUMNS]))


# -- net effect ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Effects:
    """Net effect of a set of records: per target table, one row per key with each field's final value.

    Each frame has the key columns, and per field ``F`` the columns ``F`` (value) and ``F__set`` (whether any
    record sets it); object frames also carry ``F__chunk``, the chunk of the record that set it last.
    """

    sources: pd.DataFrame
    forced: pd.DataFrame
    objects: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.sources.empty and self.forced.empty and self.objects.empty

    def source_ids(self) -> np.ndarray:
        return self.sources["diaSourceId"].to_numpy(np.int64)

    def object_ids(self) -> np.ndarray:
        return self.objects["diaObjectId"].to_numpy(np.int64)


TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "DiaSource": ("diaObjectId", "ssObjectId", "ssObjectReassocTimeMjdTai", "timeWithdrawnMjdTai"),
    "DiaForcedSource": ("timeWithdrawnMjdTai",),
    "DiaObject": ("validityEndMjdTai", "nDiaSources"),
}
TABLE_KEYS: dict[str, tuple[str, ...]] = {**apdb.ROW_KEY, "DiaObject": ("diaObjectId",)}


def _assignments(records: pd.DataFrame, table: str) -> pd.DataFrame:
    """Long form: one row per (record, field it writes) of ``table``, with the value written."""
    parts = []
    for spec in RECORD_TYPES.values():
        if spec.table != table:
            continue
        mine = records[records["update_type"] == spec.name]
        if mine.empty:
            continue
        key = list(TABLE_KEYS[table])
        for name in (*spec.sets, *spec.sets_if_given, *spec.clears):
            rows = mine
            if name in spec.sets_if_given:
                rows = mine[mine[name].notna()]
            # the reassigned-to object travels in the payload's diaObjectId; for sources it is a value, not a key
            value = pd.Series(pd.NA, index=rows.index, dtype="object") if name in spec.clears else rows[name]
            parts.append(pd.DataFrame({**{k: rows[k] for k in key}, "field": name, "value": value.astype("object"),
                                       "seq": rows["seq"], "chunk": rows["apdb_replica_chunk"]}))
    if not parts:
        return pd.DataFrame(columns=[*TABLE_KEYS[table], "field", "value", "seq", "chunk"])
    return pd.concat(parts, ignore_index=True)


#: Records reduced at once. The reduction's working set is ~1 KB per record (pandas long form), so larger sets are
#: reduced in buckets of targets: the last write wins per target, so the buckets' effects together are the whole's.
REDUCE_RECORDS = 100_000


def reduce(records: pa.Table, bucket_records: int = REDUCE_RECORDS) -> Effects:
    """Last write wins per (table, key, field), in the PPDB's order; reduced ``bucket_records`` at a time, by target
    (:func:`apdb.id_buckets` of the target's first key part)."""
    if records.num_rows <= bucket_records:
        return _reduce(records)
    buckets = -(-records.num_rows // bucket_records)
    bucket = apdb.id_buckets(record_targets(records)["k0"].to_numpy(), buckets)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    parts = [_reduce(records.take(pa.array(order[bounds[b]:bounds[b + 1]]))) for b in range(buckets)]

    def joined(name: str) -> pd.DataFrame:
        frames = [getattr(p, name) for p in parts]
        non_empty = [f for f in frames if not f.empty]
        return pd.concat(non_empty, ignore_index=True) if non_empty else frames[0]

    return Effects(sources=joined("sources"), forced=joined("forced"), objects=joined("objects"))


def _reduce(records: pa.Table) -> Effects:
    ordered = in_order(records).to_pandas(types_mapper=pd.ArrowDtype)
    ordered["seq"] = np.arange(len(ordered))
    frames = {}
    for table, fields in TABLE_FIELDS.items():
        key = list(TABLE_KEYS[table])
        writes = _assignments(ordered, table).sort_values("seq", kind="stable")
        last = writes.drop_duplicates([*key, "field"], keep="last")
        frame = last[key].drop_duplicates().reset_index(drop=True)
        for name in fields:
            of_field = last[last["field"] == name]
            merged = frame.merge(of_field[[*key, "value", "chunk"]], on=key, how="left")
            frame[f"{name}__set"] = frame.merge(of_field[key].assign(_hit=True), on=key, how="left")["_hit"].fillna(
                False).astype(bool).to_numpy()
            frame[name] = merged["value"].to_numpy()
            if table == "DiaObject":
                frame[f"{name}__chunk"] = merged["chunk"].astype("Int64").to_numpy()
        for k in key:
            frame[k] = frame[k].astype(np.int64)
        frames[table] = frame
    return Effects(sources=frames["DiaSource"], forced=frames["DiaForcedSource"], objects=frames["DiaObject"])


# -- application to tables -------------------------------------------------------------------------------------
def replace_values(column: pa.Array | pa.ChunkedArray, positions: np.ndarray, values: Sequence[object]) -> pa.Array:
    """``column`` with ``values`` at ``positions`` (distinct, any order); None writes a null."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(positions) == 0:
        return array
    order = np.argsort(positions, kind="stable")
    mask = np.zeros(len(array), dtype=bool)
    mask[positions] = True
    replacement = pa.array([_py(values[i]) for i in order], type=array.type)
    return pc.replace_with_mask(array, pa.array(mask), replacement)


def _py(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _key_positions(table_keys: Sequence[np.ndarray], effect_keys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, effect rows)`` of the table rows whose key is in the effects (multi-column keys joined)."""
    left = pd.DataFrame({f"k{i}": k for i, k in enumerate(table_keys)})
    right = pd.DataFrame({f"k{i}": k for i, k in enumerate(effect_keys)})
    left["_row"] = np.arange(len(left))
    right["_effect"] = np.arange(len(right))
    joined = left.merge(right, on=[f"k{i}" for i in range(len(table_keys))], how="inner")
    return joined["_row"].to_numpy(np.int64), joined["_effect"].to_numpy(np.int64)


def apply_fields(table: pa.Table, rows: np.ndarray, effects: pd.DataFrame, effect_rows: np.ndarray,
                 fields: Iterable[str], reach: Callable[[str], np.ndarray] | None = None) -> pa.Table:
    """Write each set field of ``effects[effect_rows]`` into ``table`` at ``rows`` (columns absent are skipped);
    ``reach(name)``, if given, says which of those rows the field's effect reaches (default: where it is set)."""
    for name in fields:
        if name not in table.column_names:
            continue
        is_set = effects[f"{name}__set"].to_numpy(bool)[effect_rows] if reach is None else reach(name)
        if not is_set.any():
            continue
        values = effects[name].to_numpy(dtype=object)[effect_rows][is_set]
        index = table.column_names.index(name)
        table = table.set_column(index, table.schema.field(index), replace_values(table[name], rows[is_set], values))
    return table


def source_hits(ids: np.ndarray, effects: Effects) -> tuple[np.ndarray, np.ndarray]:
    return _key_positions([ids], [effects.source_ids()])


def forced_hits(owner: np.ndarray, visit: np.ndarray, detector: np.ndarray, effects: Effects
                ) -> tuple[np.ndarray, np.ndarray]:
    f = effects.forced
    return _key_positions([owner, visit, detector],
                          [f["diaObjectId"].to_numpy(np.int64), f["visit"].to_numpy(np.int64),
                           f["detector"].to_numpy(np.int64)])


def object_field_mask(effects: pd.DataFrame, effect_rows: np.ndarray, row_chunk: np.ndarray, name: str
                      ) -> np.ndarray:
    """Which object rows a field's effect reaches: versions from chunks up to the record's; for
    ``validityEndMjdTai`` also rows without a version (orphan rows, ``row_chunk`` < 0)."""
    is_set = effects[f"{name}__set"].to_numpy(bool)[effect_rows]
    chunk = effects[f"{name}__chunk"].to_numpy(dtype="float64", na_value=np.nan)[effect_rows]
    reach = (row_chunk >= 0) & (row_chunk <= chunk)
    if name == "validityEndMjdTai":
        reach |= row_chunk < 0
    return is_set & reach


def apply_to_objects(table: pa.Table, rows: np.ndarray, effects: pd.DataFrame, effect_rows: np.ndarray,
                     row_chunk: np.ndarray) -> pa.Table:
    """Object fields on rows ``rows`` of ``table`` (``row_chunk``: every table row's version chunk, -1 for none)."""
    return apply_fields(table, rows, effects, effect_rows, TABLE_FIELDS["DiaObject"],
                        reach=lambda name: object_field_mask(effects, effect_rows, row_chunk[rows], name))


def version_chunks(table: pa.Table) -> np.ndarray:
    """Chunk of each object row's version (``apdb_replica_chunk``), -1 for rows without a version."""
    return pc.fill_null(table["apdb_replica_chunk"], -1).to_numpy().astype(np.int64)


@dataclass
class FlatResult:
    """Flat tables of a night after its records, and which targets were found there."""

    objects: pa.Table
    sources: pa.Table
    forced: pa.Table
    found_sources: set[int] = field(default_factory=set)
    found_forced: set[tuple[int, int, int]] = field(default_factory=set)
    found_objects: dict[int, int] = field(default_factory=dict)  # id -> smallest version chunk

    def found(self) -> pa.Table:
        return found_table(self.found_sources, self.found_forced, self.found_objects)


def apply_to_flat(objects: pa.Table, sources: pa.Table, forced: pa.Table, effects: Effects) -> FlatResult:
    """Apply ``effects`` to a night's flat (staged) tables; report the targets found in them."""
    out = FlatResult(objects, sources, forced)
    if effects.empty:
        return out
    if sources.num_rows and not effects.sources.empty:
        rows, eff = source_hits(sources["diaSourceId"].to_numpy(), effects)
        out.sources = apply_fields(sources, rows, effects.sources, eff, TABLE_FIELDS["DiaSource"])
        out.found_sources = set(effects.source_ids()[eff].tolist())
    if forced.num_rows and not effects.forced.empty:
        rows, eff = forced_hits(forced["diaObjectId"].to_numpy(), forced["visit"].to_numpy(),
                                forced["detector"].to_numpy(), effects)
        out.forced = apply_fields(forced, rows, effects.forced, eff, TABLE_FIELDS["DiaForcedSource"])
        keys = effects.forced[["diaObjectId", "visit", "detector"]].to_numpy(np.int64)[eff]
        out.found_forced = {tuple(k) for k in keys.tolist()}
    if objects.num_rows and not effects.objects.empty:
        rows, eff = _key_positions([objects["diaObjectId"].to_numpy()], [effects.object_ids()])
        chunks = version_chunks(objects)
        out.objects = apply_to_objects(objects, rows, effects.objects, eff, chunks)
        found = pd.DataFrame({"id": effects.object_ids()[eff], "chunk": chunks[rows]}).groupby("id")["chunk"].min()
        out.found_objects = {int(k): int(v) for k, v in found.items()}
    return out


# -- bookkeeping -----------------------------------------------------------------------------------------------
def record_targets(records: pa.Table) -> pd.DataFrame:
    """Per record: its table and key values (``k0..k2``, -1 where a key has fewer parts), exact int64."""
    def ints(name: str) -> np.ndarray:
        return pc.fill_null(records[name], -1).to_numpy().astype(np.int64)

    kinds = list(RECORD_TYPES)
    tables = np.array([RECORD_TYPES[kind].table for kind in kinds], dtype=object)  # three shared strings
    kind = pc.fill_null(pc.index_in(records["update_type"], value_set=pa.array(kinds)), -1).to_numpy()
    if (kind < 0).any():
        unknown = set(records["update_type"].to_pylist()) - set(kinds)
        raise BadUpdateError(f"unknown update_type in staged records: {unknown}")
    table = pd.Series(tables[kind])
    is_source = (table == "DiaSource").to_numpy()
    return pd.DataFrame({
        "table": table,
        "k0": np.where(is_source, ints("diaSourceId"), ints("diaObjectId")),
        "k1": ints("visit"),
        "k2": ints("detector"),
    })


APPLIED, PENDING, SUPERSEDED = "applied", "pending", "superseded"


#: The record targets a job found: table, key (``k0..k2`` as :func:`record_targets`), and for a DiaObject the
#: smallest version chunk it has there (-1 for points). Jobs write it to files; the commit reads them all.
FOUND_SCHEMA = pa.schema([pa.field("table", pa.string()), pa.field("k0", pa.int64()), pa.field("k1", pa.int64()),
                          pa.field("k2", pa.int64()), pa.field("chunk", pa.int64())])


def found_table(sources: Iterable[int], forced: Iterable[tuple[int, int, int]], objects: dict[int, int]) -> pa.Table:
    """Targets found (:data:`FOUND_SCHEMA`), from the sets a search collects."""
    return found_arrays(np.fromiter(sources, np.int64), np.array(list(forced), dtype=np.int64).reshape(-1, 3),
                        np.fromiter(objects.keys(), np.int64, count=len(objects)),
                        np.fromiter(objects.values(), np.int64, count=len(objects)))


def found_arrays(source_ids: np.ndarray, forced: np.ndarray, object_ids: np.ndarray, object_chunks: np.ndarray
                 ) -> pa.Table:
    """Targets found (:data:`FOUND_SCHEMA`): DiaSource ids, (diaObjectId, visit, detector) rows, objects with the
    version chunk they were found with (repeats allowed: :func:`statuses` keeps an object's smallest)."""
    def none(n: int) -> np.ndarray:
        return np.full(n, -1, np.int64)

    forced = forced.reshape(-1, 3)
    return pa.table({
        "table": pa.array(["DiaSource"] * len(source_ids) + ["DiaForcedSource"] * len(forced)
                          + ["DiaObject"] * len(object_ids), pa.string()),
        "k0": np.concatenate([source_ids, forced[:, 0], object_ids]).astype(np.int64),
        "k1": np.concatenate([none(len(source_ids)), forced[:, 1], none(len(object_ids))]).astype(np.int64),
        "k2": np.concatenate([none(len(source_ids)), forced[:, 2], none(len(object_ids))]).astype(np.int64),
        "chunk": np.concatenate([none(len(source_ids) + len(forced)), object_chunks]).astype(np.int64),
    }, schema=FOUND_SCHEMA)


@dataclass(frozen=True)
class FoundTargets:
    """The targets found by any number of jobs (:data:`FOUND_SCHEMA` rows), as sorted key arrays (8 bytes a
    target): an object found in several places keeps its smallest version chunk."""

    sources: np.ndarray  # diaSourceIds, sorted, unique
    forced: pd.MultiIndex  # (diaObjectId, visit, detector), unique
    objects: np.ndarray  # diaObjectIds, sorted, unique
    object_chunks: np.ndarray  # each object's smallest version chunk

    @staticmethod
    def of(found: pa.Table) -> FoundTargets:
        table = found["table"]
        k0 = found["k0"].to_numpy()

        def rows(name: str) -> np.ndarray:
            return np.flatnonzero(pc.equal(table, name).to_numpy(zero_copy_only=False))

        forced = rows("DiaForcedSource")
        keys = pd.DataFrame({"diaObjectId": k0[forced], "visit": found["k1"].to_numpy()[forced],
                             "detector": found["k2"].to_numpy()[forced]}).drop_duplicates()
        objects = rows("DiaObject")
        ids, chunks = k0[objects], found["chunk"].to_numpy()[objects]
        order = np.lexsort((chunks, ids))  # by object, smallest chunk first
        ids, chunks = ids[order], chunks[order]
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, np.int64)
        return FoundTargets(np.unique(k0[rows("DiaSource")]), pd.MultiIndex.from_frame(keys), ids[first],
                            chunks[first])


def _sorted_hits(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each of ``keys`` is in ``sorted_keys``, and where."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), max(0, len(sorted_keys) - 1))
    hit = (sorted_keys[at] == keys) if len(sorted_keys) else np.zeros(len(keys), dtype=bool)
    return hit, at


def statuses(records: pa.Table, found: pa.Table | FoundTargets) -> np.ndarray:
    """Per record: ``applied`` (target found), ``pending`` (target not ingested yet) or ``superseded`` (a DiaObject
    record whose object has only versions from later chunks)."""
    found = found if isinstance(found, FoundTargets) else FoundTargets.of(found)
    targets = record_targets(records)
    table, k0 = targets["table"].to_numpy(), targets["k0"].to_numpy(np.int64)
    out = np.full(len(targets), PENDING, dtype=object)
    sources = np.flatnonzero(table == "DiaSource")
    hit, _ = _sorted_hits(found.sources, k0[sources])
    out[sources[hit]] = APPLIED
    forced = np.flatnonzero(table == "DiaForcedSource")
    if len(forced):
        keys = pd.MultiIndex.from_arrays([k0[forced], targets["k1"].to_numpy(np.int64)[forced],
                                          targets["k2"].to_numpy(np.int64)[forced]])
        out[forced[found.forced.get_indexer(keys) >= 0]] = APPLIED
    objects = np.flatnonzero(table == "DiaObject")
    hit, at = _sorted_hits(found.objects, k0[objects])
    chunk = records["apdb_replica_chunk"].to_numpy(zero_copy_only=False)[objects]
    later = hit & (found.object_chunks[at] > chunk if len(found.objects) else False)
    out[objects[hit]] = APPLIED
    out[objects[later]] = SUPERSEDED
    return out


def counts_by_type(records: pa.Table, mask: np.ndarray | None = None) -> dict[str, int]:
    types = records["update_type"]
    if mask is not None:
        types = types.filter(pa.array(mask, pa.bool_()))
    counts = pc.value_counts(types.combine_chunks() if isinstance(types, pa.ChunkedArray) else types)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return dict(sorted((str(name), int(n)) for name, n in pairs))
