"""Atomic, versioned collection directories.

``collection_dir`` (what users open with ``lsdb.open_catalog``) is a symbolic link to one complete version under
``<collection_dir>.versions/``. A change is built in a new version directory and published by replacing the
link with one ``rename(2)``: a reader or a crash sees the collection before or after the change, never half of
it. A new version starts as a copy of the current one in which every data file is a *hard link* (no bytes
copied) and every small metadata file a real copy, so rewriting metadata never touches an older version; data
files are never modified in place, only added or (in a new version) left out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d{6})-(.+)$")


class CollectionStateError(RuntimeError):
    """The collection path is not in a state this operation accepts."""


class VersionedCollection:
    """A collection path and its version store."""

    def __init__(self, collection_dir: Path | str):
        self.link = Path(os.path.abspath(collection_dir))
        self.versions_dir = self.link.parent / f"{self.link.name}.versions"

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.link.is_symlink() or self.link.exists()

    def current(self) -> Path | None:
        """The published version directory, or ``None`` if no collection exists yet."""
        if not self.exists():
            return None
        if not self.link.is_symlink():
            raise CollectionStateError(
                f"{self.link} exists but is not a versioned collection (a symlink into {self.versions_dir}); "
                "refusing to modify it"
            )
        target = self.link.resolve()
        if not target.is_dir():
            raise CollectionStateError(f"{self.link} points to a missing version {target}")
        return target

    def versions(self) -> list[Path]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION.match(p.name))

    def _next_number(self) -> int:
        numbers = [int(_VERSION.match(p.name).group(1)) for p in self.versions()]  # type: ignore[union-attr]
        return max(numbers, default=0) + 1

    # -- writing -------------------------------------------------------------------------------------------
    def staging(self, label: str) -> Path:
        """A fresh, empty staging directory for the next version (leftovers of a crashed attempt removed)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        path = self.versions_dir / f".staging-{label}"
        if path.exists():
            log.info("removing leftover staging directory %s", path)
            shutil.rmtree(path)
        return path

    def stage_copy(self, label: str, is_data: Callable[[Path], bool]) -> Path:
        """Staging copy of the current version: data files hard-linked, everything else copied."""
        base = self.current()
        if base is None:
            raise CollectionStateError(f"no collection at {self.link}")
        target = self.staging(label)

        def copy(src: str, dst: str) -> None:
            if is_data(Path(src)):
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)

        shutil.copytree(base, target, copy_function=copy, symlinks=True)
        return target

    def publish(self, staged: Path, label: str, keep: int = 2) -> Path:
        """Move ``staged`` into place as the newest version and switch the link to it atomically."""
        version = self.versions_dir / f"v{self._next_number():06d}-{label}"
        os.rename(staged, version)
        _fsync_dir(self.versions_dir)
        tmp_link = self.link.parent / f".{self.link.name}.link-{os.getpid()}"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(os.path.relpath(version, self.link.parent), tmp_link)
        os.replace(tmp_link, self.link)
        _fsync_dir(self.link.parent)
        log.info("published %s -> %s", self.link, version.name)
        self.prune(keep)
        return version

    def prune(self, keep: int) -> None:
        """Remove all but the newest ``keep`` versions (never the published one) and stale staging dirs."""
        current = self.current()
        for old in self.versions()[:-keep] if keep > 0 else []:
            if old != current:
                shutil.rmtree(old, ignore_errors=True)
        for leftover in self.versions_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
