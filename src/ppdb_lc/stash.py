"""A scratch store of Arrow tables by integer key: held in memory up to a byte limit, spilled to IPC files beyond.

Compaction uses it for the rows that must wait for another pixel (objects that moved, margin rows): the common
case stays in memory, and a large week still runs in bounded memory. Arrow IPC (uncompressed) makes a spill cost
little more than a memory copy to disk.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

DEFAULT_MEMORY_LIMIT = 512 * 1024**2


class Stash:
    """``put(key, table)`` any number of times, ``take(key)`` once: all tables of the key, concatenated."""

    def __init__(self, directory: Path, schema: pa.Schema, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.memory_limit = memory_limit
        self._held: dict[int, list[pa.Table]] = defaultdict(list)
        self._spilled: dict[int, list[Path]] = defaultdict(list)
        self._held_bytes = 0
        self.spilled_bytes = 0

    def put(self, key: int, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._held[int(key)].append(table)
        self._held_bytes += table.nbytes
        if self._held_bytes > self.memory_limit:
            self._spill()

    def take(self, key: int) -> pa.Table:
        key = int(key)
        tables = [self._read(path) for path in self._spilled.pop(key, [])]
        held = self._held.pop(key, [])
        self._held_bytes -= sum(t.nbytes for t in held)
        tables += held
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables([t.cast(self.schema) for t in tables])

    def keys(self) -> set[int]:
        return set(self._held) | set(self._spilled)

    def close(self) -> None:
        self._held.clear()
        self._spilled.clear()
        self._held_bytes = 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def _spill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for key, tables in self._held.items():
            path = self.directory / f"{key}.{len(self._spilled[key]):05d}.arrow"
            table = pa.concat_tables([t.cast(self.schema) for t in tables])
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
