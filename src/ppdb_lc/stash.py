"""A scratch store of Arrow tables by integer key: held in memory up to a byte limit, spilled to IPC files beyond.

Compaction uses it for the rows that must wait for another pixel (objects that moved, margin rows, groups folded
last): the common case stays in memory, and a large week still runs in bounded memory. Arrow IPC (uncompressed)
makes a spill cost little more than a memory copy to disk. A table can be put with a row mask: held tables are
then not copied at all, spilled ones are filtered on the way out.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

DEFAULT_MEMORY_LIMIT = 512 * 1024**2


class Stash:
    """``put(key, table)`` any number of times, ``take(key)`` once: all tables of the key, concatenated."""

    def __init__(self, directory: Path, schema: pa.Schema, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.memory_limit = memory_limit
        self._held: dict[int, list[tuple[pa.Table, np.ndarray | None]]] = defaultdict(list)
        self._spilled: dict[int, list[Path]] = defaultdict(list)
        self._held_bytes = 0
        self.spilled_bytes = 0

    def put(self, key: int, table: pa.Table, keep: np.ndarray | None = None, nbytes: int | None = None) -> None:
        """Add ``table`` (only its rows where ``keep`` is true, if given) under ``key``.

        ``nbytes``: the table's size if the caller knows it (``Table.nbytes`` of a slice of nested columns costs
        ~1 ms).
        """
        if table.num_rows == 0 or (keep is not None and not keep.any()):
            return
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        self._held[int(key)].append((table, keep))
        self._held_bytes += table.nbytes if nbytes is None else nbytes
        if self._held_bytes > self.memory_limit:
            self._spill()

    def put_rows(self, table: pa.Table, rows: np.ndarray, keys: np.ndarray) -> None:
        """Put ``table``'s row ``rows[i]`` under ``keys[i]``, for all i: one take for all keys, then a zero-copy
        slice per key (filtering the table once per key would scan it once per key)."""
        if len(rows) == 0:
            return
        order = np.lexsort((rows, keys))
        taken, keys = table.take(pa.array(rows[order])), keys[order]
        row_bytes = taken.nbytes / taken.num_rows
        bounds = np.flatnonzero(np.diff(keys)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
            self.put(int(keys[start]), taken.slice(int(start), int(stop - start)), nbytes=int(row_bytes * (stop - start)))

    def take_masked(self, key: int) -> tuple[pa.Table, np.ndarray]:
        """All rows put under ``key`` as one table and the mask of those that count; removes them."""
        key = int(key)
        parts = [(self._read(path), None) for path in self._spilled.pop(key, [])]
        held = self._held.pop(key, [])
        self._held_bytes -= sum(t.nbytes for t, _ in held)
        parts += held
        if not parts:
            return self.schema.empty_table(), np.zeros(0, dtype=bool)
        keep = np.concatenate([np.ones(t.num_rows, dtype=bool) if m is None else m for t, m in parts])
        return pa.concat_tables([t for t, _ in parts]), keep

    def take(self, key: int) -> pa.Table:
        """All rows put under ``key`` (masks applied) as one table; removes them."""
        table, keep = self.take_masked(key)
        return table if keep.all() else table.filter(pa.array(keep))

    def keys(self) -> set[int]:
        return set(self._held) | set(self._spilled)

    def close(self) -> None:
        self._held.clear()
        self._spilled.clear()
        self._held_bytes = 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def _spill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for key, parts in self._held.items():
            path = self.directory / f"{key}.{len(self._spilled[key]):05d}.arrow"
            table = pa.concat_tables([t if m is None else t.filter(pa.array(m)) for t, m in parts])
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
                writer.write_table(table)
            self._spilled[key].append(path)
            self.spilled_bytes += table.nbytes
        self._held.clear()
        self._held_bytes = 0

    @staticmethod
    def _read(path: Path) -> pa.Table:
        with pa.OSFile(str(path), "rb") as source:
            table = pa.ipc.open_file(source).read_all()
        path.unlink()
        return table
