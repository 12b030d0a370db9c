"""One writer per output directory: a lock file, and the checks before a run starts.

A run takes ``<dir>/.textcl.lock`` by creating it with ``O_CREAT | O_EXCL`` (atomic: of two
runs started at once exactly one succeeds) and writes into it who holds it: pid, host,
start time, and on Linux the boot id and the process start tick, so a recycled pid is not
mistaken for the holder. A second run finds the file and stops with one line naming the
holder. A lock left by a run that died without releasing it (``kill -9``, power loss) is
*stale* when it was taken on this host and its process is gone; the next run takes it over
with a warning. A lock taken on another host is never taken over (its process cannot be
checked from here): the message says which host holds it and which file to delete.

Every problem raises :class:`OutputDirError` (a :class:`~textcl.core.recipe.RecipeError`),
so the CLIs print it as one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from textcl.core.recipe import RecipeError

__all__ = ["LOCK_NAME", "DirLock", "OutputDirError", "check_output_dir", "launch_rank"]

logger = logging.getLogger("textcl")

#: The lock file's name inside the locked directory.
LOCK_NAME = ".textcl.lock"
# Reading a lock that another process has just created: its content may not be written yet.
_READ_TRIES = 20
_READ_WAIT_S = 0.05
# A takeover guard left by a process killed in the few microseconds it exists.
_GUARD_STALE_S = 30.0


class OutputDirError(RecipeError):
    """An output directory that cannot be used: a file, under a file, not writable, in use."""


def launch_rank() -> int:
    """This process's global rank as torchrun / ``accelerate launch`` set it (0 when not launched).

    Read from the environment because the checks run before the accelerator exists.
    """
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def check_output_dir(path: str | Path, label: str, *, create: bool = True) -> Path:
    """Fail early, before any model loads, when ``path`` cannot be an output directory.

    ``label`` starts every message (e.g. ``"r.yaml: output_dir: runs/x"``). With ``create``
    the directory is made (the lock goes into it) and must be writable; processes other
    than rank 0 pass ``create=False`` and only check the path (they never write there).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{label} is a file, not a directory — choose another output_dir, or move the file away")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputDirError(f"{label} lies under {parent}, which is a file — choose another output_dir")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputDirError(
                f"{label} cannot be created ({exc.strerror or exc}) — choose a directory you can write to"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputDirError(f"{label} is not writable — choose a directory you can write to")
    return path


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


class DirLock:
    """Exclusive lock on a directory (see the module docstring); a context manager.

    ``label`` starts the error messages, e.g. ``"r.yaml: output_dir: runs/x"``.
    """

    def __init__(self, directory: str | Path, label: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.label = label
        self._token: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._token is not None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise :class:`OutputDirError` if it is held."""
        if self.held:
            return
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:  # released (or taken over) between our open and read: try again
                    continue
                if not self._is_stale(holder):
                    raise OutputDirError(self._held_message(holder)) from None
                self._take_over(holder)
                continue
            except OSError as exc:
                raise OutputDirError(
                    f"{self.label} is not writable ({exc.strerror or exc}) — choose a directory you can write to"
                ) from None
            token = secrets.token_hex(8)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "boot_id": _boot_id(),
                "process_start": _process_start(os.getpid()),
                "token": token,
            }
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._token = token
            return
        raise OutputDirError(
            f"{self.label}: could not take the lock {self.path} (other runs keep taking it) — "
            "run one at a time"
        )

    def release(self) -> None:
        """Remove the lock file if this object still holds it (a no-op otherwise)."""
        if self._token is None:
            return
        token, self._token = self._token, None
        try:
            holder = self._read(tries=1)
        except OutputDirError:  # not ours any more (we write a valid record): leave it
            holder = {"pid": "?", "host": "?"}
        if holder is not None and holder.get("token") != token:
            logger.warning("%s: the lock %s was taken over by pid %s on %s; leaving it",
                           self.label, self.path, holder.get("pid"), holder.get("host"))
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove the lock %s (%s)", self.path, exc)

    # ------------------------------------------------------------------ helpers
    def _read(self, tries: int = _READ_TRIES) -> dict[str, Any] | None:
        """The holder's record; None if the file is gone. A record still unreadable after
        ``tries`` reads (the creator writes it right after creating the file) raises."""
        for attempt in range(tries):
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            except (OSError, UnicodeDecodeError):
                text = ""
            try:
                record = json.loads(text)
                if isinstance(record, dict) and isinstance(record.get("pid"), int):
                    return record
            except json.JSONDecodeError:
                pass
            if attempt + 1 < tries:
                time.sleep(_READ_WAIT_S)
        raise OutputDirError(
            f"{self.label} has an unreadable lock file {self.path} — if no run uses this directory, delete it"
        )

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        boot = _boot_id()
        if boot is not None and holder.get("boot_id") not in (None, boot):
            return True  # taken before a reboot
        pid = int(holder["pid"])
        if not _pid_alive(pid):
            return True
        # The pid is alive but may be a new process that reused it.
        started = holder.get("process_start")
        now = _process_start(pid)
        return started is not None and now is not None and started != now

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Delete the stale lock ``stale``, unless another process replaced it meanwhile.

        A guard file (created O_EXCL) serialises takeovers: without it, a second process
        that also saw the stale lock could delete the fresh lock of the first one.
        """
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                    guard.unlink()
            except OSError:
                pass
            time.sleep(_READ_WAIT_S)
            return
        try:
            current = self._read()
            if current is not None and current.get("token") == stale.get("token") and current["pid"] == stale["pid"]:
                self.path.unlink()
                logger.warning(
                    "%s: taking over the stale lock of pid %s on %s (started %s), which is no longer running",
                    self.label, stale["pid"], stale.get("host"), stale.get("started"),
                )
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def _held_message(self, holder: dict[str, Any]) -> str:
        who = f"pid {holder['pid']} on {holder.get('host', '?')}"
        if holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
            who += " (this process)"
        return (
            f"{self.label} is in use by another run ({who}, started {holder.get('started', '?')}) — "
            f"wait for it to finish or choose another output_dir; if no such run exists, delete {self.path}"
        )
