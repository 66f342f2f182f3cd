"""One writer at a time per collection: a lock file next to the collection directory.

``<collection_dir>.lock`` holds the holder as JSON (host, boot id, pid and process start time, target, start
time, working directory). Every run that can publish takes it before its first job and releases it when it ends,
whatever its working directory; a second run is refused at once with a message that names the holder.

A lock whose holder is gone is *stale*. On the holder's host this is detected (no process with that pid and start
time since the last boot) and the lock is taken over with a warning, so a killed run never blocks the next one.
From another host the holder cannot be checked: the refusal says so, and ``ppdb-lc unlock COLLECTION`` clears it
once the operator knows that run is gone.

Reading and replacing the lock file happens under a short ``flock`` on ``<collection_dir>.lock.guard`` (served by
the NFS lock manager on shared file systems), so two runs cannot both take over a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


class CollectionLockedError(RuntimeError):
    """Another run holds the collection's lock."""


@dataclass(frozen=True)
class Holder:
    host: str
    boot_id: str
    pid: int
    pid_start: str
    target: str
    started: str
    workdir: str

    def describe(self) -> str:
        return (f"pid {self.pid} on {self.host} (target {self.target!r}, started {self.started}, "
                f"working directory {self.workdir})")

    def is_alive(self) -> bool | None:
        """Whether the holding process still runs; ``None`` when that cannot be told from this host."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id != _boot_id():
            return False  # the host rebooted since
        if not Path("/proc/self/stat").exists():  # no procfs (macOS): the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return _process_start(self.pid) == self.pid_start


def lock_path(collection_dir: str | Path) -> Path:
    root = Path(os.path.abspath(collection_dir))
    return root.parent / f"{root.name}.lock"


def read_holder(collection_dir: str | Path) -> Holder | None:
    path = lock_path(collection_dir)
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:  # not written by us: never taken over silently
        raise CollectionLockedError(f"{path} exists but is unreadable ({err}); remove it if no run is active") from err


def this_process(target: str) -> Holder:
    return Holder(host=socket.gethostname(), boot_id=_boot_id(), pid=os.getpid(), pid_start=_process_start(os.getpid()),
                  target=target, started=datetime.now(tz=UTC).isoformat(timespec="seconds"), workdir=os.getcwd())


def acquire(collection_dir: str | Path, target: str) -> Holder:
    """Take the lock for this process or raise :class:`CollectionLockedError` naming the holder."""
    path = lock_path(collection_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process(target)
    with _guard(path):
        holder = read_holder(collection_dir)
        if holder is not None and holder.pid == me.pid and holder.host == me.host and holder.pid_start == me.pid_start:
            return holder  # already ours (re-entrant)
        if holder is not None:
            alive = holder.is_alive()
            if alive is None:
                raise CollectionLockedError(
                    f"{Path(collection_dir)} is locked by {holder.describe()}, which cannot be checked from this host. "
                    f"If that run is gone, clear the lock with `ppdb-lc unlock {collection_dir}`."
                )
            if alive:
                raise CollectionLockedError(
                    f"{Path(collection_dir)} is locked by {holder.describe()}: one run at a time; try again when it "
                    "has finished"
                )
            log.warning("taking over the stale lock of %s: that process is gone", holder.describe())
        _write(path, me)
    return me


def release(collection_dir: str | Path, holder: Holder) -> bool:
    """Remove the lock if ``holder`` still holds it; return whether it did."""
    path = lock_path(collection_dir)
    with _guard(path):
        try:
            current = read_holder(collection_dir)
        except CollectionLockedError:
            return False
        if current is None or (current.host, current.pid, current.pid_start) != (holder.host, holder.pid,
                                                                                 holder.pid_start):
            return False
        path.unlink()
        return True


def clear(collection_dir: str | Path, *, force: bool = False) -> Holder | None:
    """Remove the lock (the documented way out of a stale lock held from another host).

    Refuses a holder that is known to be alive on this host unless ``force``.
    """
    path = lock_path(collection_dir)
    with _guard(path):
        try:
            holder = read_holder(collection_dir)
        except CollectionLockedError:
            holder = None
        if holder is not None and holder.is_alive() and not force:
            raise CollectionLockedError(f"{holder.describe()} is still running; not clearing its lock "
                                        "(--force clears it anyway)")
        path.unlink(missing_ok=True)
        return holder


@contextlib.contextmanager
def held(collection_dir: str | Path, target: str) -> Iterator[Holder]:
    """The lock for the duration of a ``with`` block (command-line operations such as rollback)."""
    holder = acquire(collection_dir, target)
    try:
        yield holder
    finally:
        release(collection_dir, holder)


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    with open(path.parent / f"{path.name}.guard", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, holder: Holder) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    tmp.write_text(json.dumps(asdict(holder), indent=1))
    os.replace(tmp, path)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks since boot ('' if there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces or ')'
