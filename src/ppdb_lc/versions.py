"""Atomic, versioned collection directories that readers can keep open.

Layout::

    <collection_dir>/                      what users open with ``lsdb.open_catalog``
        collection.properties              the published version: its sub-catalog paths point into
                                           ``versions/<version>/`` and ``collection_version`` names it
        versions/v000007-2026-11-24/       one complete collection (also openable on its own)
        versions/v000008-weekly-…/

A change is built in a new version directory and published by replacing the top-level ``collection.properties``
with one ``rename(2)``. A reader resolves the sub-catalog paths when it opens the collection, so it keeps reading
the version it opened (data files are never modified in place, only hard-linked into newer versions) for as long
as that version is kept: the published one and at least the one before it. A crash or a reader sees the
collection before or after a change, never half of it.

A new version starts as a copy of the published one in which every data file is a *hard link* (no bytes copied)
and every small metadata file a real copy. Publishing is compare-and-swap: a version built on a base that is no
longer the published one is discarded, never published over it. Version numbers only grow; a version numbered
above the published one was never published (a crash between its rename and the switch) and is removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ppdb_lc import faults

log = logging.getLogger(__name__)

POINTER = "collection.properties"
VERSIONS = "versions"
VERSION_PROPERTY = "collection_version"
MIN_KEEP = 2  # the published version and the one before it: readers of the previous version keep working
VERSION_NAME = re.compile(r"^v(\d{6})-(.+)$")
_POINTER_VERSION = re.compile(rf"^\s*{VERSION_PROPERTY}\s*[=:]\s*(\S+)\s*$", re.MULTILINE)


class CollectionStateError(RuntimeError):
    """The collection path is not in a state this operation accepts."""


class StaleBaseError(CollectionStateError):
    """A new version was built on a base that is no longer the published version."""


def version_number(version: Path | str) -> int:
    match = VERSION_NAME.match(Path(version).name)
    if not match:
        raise ValueError(f"{version} is not a version name (vNNNNNN-label)")
    return int(match.group(1))


def version_label(version: Path | str) -> str:
    match = VERSION_NAME.match(Path(version).name)
    if not match:
        raise ValueError(f"{version} is not a version name (vNNNNNN-label)")
    return match.group(2)


class VersionedCollection:
    """A collection directory and its version store."""

    def __init__(self, collection_dir: Path | str):
        self.root = Path(os.path.abspath(collection_dir))
        self.versions_dir = self.root / VERSIONS
        self.pointer = self.root / POINTER

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        """A collection has been published here (a crashed first build leaves none)."""
        return self.current() is not None

    def current(self) -> Path | None:
        """The published version directory, or ``None`` if nothing was published yet."""
        if self.root.is_symlink():
            raise CollectionStateError(
                f"{self.root} is a symbolic link: a collection of the old layout (ppdb-lc < 0.2) or not one of "
                f"ours. Refusing to modify it; build a new collection with `snakemake bootstrap`."
            )
        if not self.pointer.exists():
            if self.root.is_dir() and any(p.name != VERSIONS for p in self.root.iterdir()):
                raise CollectionStateError(
                    f"{self.root} exists but is not a versioned collection (no {POINTER} with "
                    f"{VERSION_PROPERTY}); refusing to modify it"
                )
            return None
        match = _POINTER_VERSION.search(self.pointer.read_text())
        if match is None:
            raise CollectionStateError(
                f"{self.pointer} has no {VERSION_PROPERTY}: not a versioned collection; refusing to modify it"
            )
        target = self.versions_dir / match.group(1)
        if not target.is_dir():
            raise CollectionStateError(f"{self.pointer} names a missing version {target}")
        return target

    def versions(self) -> list[Path]:
        """Every complete version directory on disk, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        return sorted((p for p in self.versions_dir.iterdir() if p.is_dir() and VERSION_NAME.match(p.name)),
                      key=version_number)

    def published_versions(self) -> list[Path]:
        """The versions that were published at some time (all but never-switched leftovers), oldest first."""
        current = self.current()
        if current is None:
            return []
        return [v for v in self.versions() if version_number(v) <= version_number(current)]

    def _next_number(self) -> int:
        return max((version_number(p) for p in self.versions()), default=0) + 1

    # -- writing (callers hold the collection lock, see ppdb_lc.lock) ---------------------------------------
    def staging(self, label: str) -> Path:
        """A fresh, empty staging directory for the next version (leftovers of a crashed attempt removed)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        path = self.versions_dir / f".staging-{label}"
        if path.exists():
            log.info("removing leftover staging directory %s", path)
            shutil.rmtree(path)
        return path

    def stage_copy(self, label: str, is_data: Callable[[Path], bool], source: Path | None = None) -> Path:
        """Staging copy of ``source`` (default: the published version): data hard-linked, the rest copied."""
        base = source or self.current()
        if base is None:
            raise CollectionStateError(f"no collection at {self.root}")
        target = self.staging(label)

        def copy(src: str, dst: str) -> None:
            if is_data(Path(src)):
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)

        shutil.copytree(base, target, copy_function=copy, symlinks=True)
        return target

    def publish(self, staged: Path, label: str, *, base: Path | None, keep: int = MIN_KEEP) -> Path:
        """Publish ``staged`` as the newest version if ``base`` is still the published version.

        Compare-and-swap: if another version was published since ``base`` was read, ``staged`` is removed and
        :class:`StaleBaseError` raised. Otherwise ``staged`` is renamed into place and the top-level
        ``collection.properties`` replaced atomically.
        """
        self.check_base(staged, label, base)
        self.remove_unpublished()
        version = self.versions_dir / f"v{self._next_number():06d}-{label}"
        os.rename(staged, version)
        _fsync_dir(self.versions_dir)
        faults.point("publish:renamed")
        self._switch(version)
        log.info("published %s -> %s", self.root, version.name)
        faults.point("publish:switched")
        self.prune(keep)
        return version

    def check_base(self, staged: Path, label: str, base: Path | None) -> None:
        """Raise :class:`StaleBaseError` (and remove ``staged``) unless ``base`` is still the published version."""
        current = self.current()
        if current != base:
            shutil.rmtree(staged, ignore_errors=True)
            raise StaleBaseError(
                f"{label} was built on {base.name if base else 'no collection'} but "
                f"{current.name if current else 'nothing'} is published now: it was discarded, not published "
                "(run it again to build on the published version)"
            )

    def rollback(self, is_data: Callable[[Path], bool], keep: int = MIN_KEEP) -> Path:
        """Publish the version before the published one again, as a new version (its ledger included).

        Readers of the rolled-back version keep it (it becomes the previous version); the next daily ingests again
        what the rolled-back version had and the restored one has not.
        """
        published = self.published_versions()
        if len(published) < 2:
            raise CollectionStateError(f"{self.root}: no previous version is kept, nothing to roll back to")
        current, previous = published[-1], published[-2]
        label = f"rollback-to-v{version_number(previous):06d}"
        staged = self.stage_copy(label, is_data, source=previous)
        return self.publish(staged, label, base=current, keep=keep)

    def _switch(self, version: Path) -> None:
        """Replace the top-level ``collection.properties`` by one that points into ``version``."""
        tmp_dir = self.versions_dir / f".pointer-{os.getpid()}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        _write_pointer(version, tmp_dir)
        with open(tmp_dir / POINTER, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_dir / POINTER, self.pointer)
        _fsync_dir(self.root)
        tmp_dir.rmdir()

    def remove_unpublished(self) -> None:
        """Remove versions numbered above the published one: renamed into place but never switched to."""
        current = self.current()
        limit = version_number(current) if current is not None else 0
        for version in self.versions():
            if version_number(version) > limit:
                log.warning("removing %s: it was never published (a run was interrupted before its switch)",
                            version.name)
                shutil.rmtree(version)

    def remove_leftovers(self) -> None:
        """Remove what interrupted runs left: staging directories and never-published versions."""
        if self.exists():
            self.remove_unpublished()
        for leftover in [*self.versions_dir.glob(".staging-*"), *self.versions_dir.glob(".pointer-*")]:
            log.info("removing leftover %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def prune(self, keep: int) -> None:
        """Keep the newest ``keep`` published versions (at least the published one and its predecessor)."""
        self.remove_leftovers()
        for old in self.published_versions()[:-max(keep, MIN_KEEP)]:
            shutil.rmtree(old, ignore_errors=True)


def _write_pointer(version: Path, out_dir: Path) -> None:
    """Write into ``out_dir`` the top-level properties of ``version``: its own, with paths into the version."""
    from hats.catalog.dataset.collection_properties import CollectionProperties

    props = CollectionProperties.read_from_dir(version)
    prefix = f"{VERSIONS}/{version.name}"

    def inner(path: str | None) -> str | None:
        return None if path is None else f"{prefix}/{path}"

    fields = props.model_dump(by_alias=True, exclude_none=True)
    fields.update(
        hats_primary_table_url=inner(props.hats_primary_table_url),
        all_margins=[inner(m) for m in props.all_margins or []] or None,
        default_margin=inner(props.default_margin),
        all_indexes={k: inner(v) for k, v in (props.all_indexes or {}).items()} or None,
    )
    fields[VERSION_PROPERTY] = version.name
    pointer = CollectionProperties(**{k: v for k, v in fields.items() if v is not None})
    pointer.to_properties_file(out_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
