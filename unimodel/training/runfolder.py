"""A run folder's checkpoints, written so that a kill at any instant leaves one to resume from.

Layout of ``train.output_dir``::

    checkpoints/step-000120/   complete checkpoints, the newest ``train.keep_checkpoints`` of them
    checkpoint.json            the pointer: names the newest complete step folder
    checkpoint -> checkpoints/step-000120   a link to the same folder (what readers have always used)
    train.lock                 the lock of the run writing here (pid, host, start time)

The save sequence (:func:`commit_checkpoint`), each point named for fault injection:

1. ``temp-folder``: an empty ``checkpoints/.step-NNNNNN.tmp-XXXX/`` is created;
2. ``files-written``: every file is written into it;
3. ``files-synced``: each file, then the folder, is fsync'd;
4. ``folder-renamed``: it is renamed to ``checkpoints/step-NNNNNN`` and ``checkpoints/`` fsync'd;
5. ``pointer-written``: the new pointer is written to a temporary file and fsync'd;
6. ``pointer-replaced``: ``os.replace`` puts it over ``checkpoint.json``; the folder is fsync'd;
7. ``link-replaced``: the ``checkpoint`` link is replaced the same way;
8. ``pruned``: step folders beyond ``keep_checkpoints`` are renamed to temporary names and removed.

A step folder only ever appears whole (a rename), and the previous checkpoint is removed only
after the new pointer is durable. ``--resume`` takes the newest step folder that is complete and
finite (:func:`find_resume_checkpoint`); temporary folders a kill left are removed at the next
start (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimodel.checkpoint import (
    CONFIG_FILE,
    RUN_CHECKPOINTS_DIR,
    RUN_LATEST,
    RUN_POINTER_FILE,
    RUN_POINTER_FORMAT,
    WEIGHTS_FILE,
    fsync_path,
    fsync_tree,
    nonfinite_tensors,
    read_run_pointer,
    step_of_folder,
    write_file_durably,
)
from unimodel.errors import CheckpointError, TrainingError
from unimodel.training.state import OPTIMIZER_FILE, RNG_FILE, RUN_FILE, STATE_FILE, read_json_state

LOCK_FILE = "train.lock"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, RUN_FILE, STATE_FILE, OPTIMIZER_FILE, RNG_FILE)
SAVE_POINTS = (
    "temp-folder",
    "files-written",
    "files-synced",
    "folder-renamed",
    "pointer-written",
    "pointer-replaced",
    "link-replaced",
    "pruned",
)
#: ``point:mode`` (mode ``raise``, ``exit`` or ``enospc``): fail the save sequence at that point
FAULT_ENV = "UNIMODEL_FAULT_INJECT"
FAULT_EXIT_CODE = 77

Log = Callable[[str], None]


class InjectedFault(RuntimeError):
    """Raised at a save point named by ``UNIMODEL_FAULT_INJECT=point:raise`` (tests of the save sequence)."""


def fault_point(name: str) -> None:
    """A point of the save sequence where a test may crash the process (see :data:`FAULT_ENV`)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, mode = spec.partition(":")
    if point != name:
        return
    if mode == "exit":
        os._exit(FAULT_EXIT_CODE)  # as abrupt as a kill: no cleanup, no flush
    if mode == "enospc":
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    raise InjectedFault(f"injected fault at save point {name!r}")


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def is_temporary(name: str) -> bool:
    """Names of the temporary files and folders that saves create (all start with a dot)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class CheckpointRef:
    """A complete step folder: its step and path."""

    step: int
    folder: Path


def step_folders(out: Path) -> list[CheckpointRef]:
    """The step folders of ``out`` holding every checkpoint file, newest first (not yet verified)."""
    root = out / RUN_CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = step_of_folder(entry.name)
        if step is not None and entry.is_dir() and all((entry / f).is_file() for f in REQUIRED_FILES):
            found.append(CheckpointRef(step, entry))
    return sorted(found, key=lambda r: r.step, reverse=True)


def checkpoint_problem(ref: CheckpointRef) -> str | None:
    """Why ``ref`` cannot be resumed from (unreadable state, wrong step, NaN/inf weights), or None."""
    from unimodel.checkpoint import load_tensors

    try:
        state = read_json_state(ref.folder / STATE_FILE)
        if state["step"] != ref.step:
            return f"its trainer state is of step {state['step']}"
        tensors, _ = load_tensors(ref.folder / WEIGHTS_FILE)
    except CheckpointError as exc:
        return str(exc)
    bad = nonfinite_tensors(tensors)
    if bad:
        return f"{len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})"
    return None


def find_resume_checkpoint(out: Path, log: Log) -> CheckpointRef | None:
    """The newest complete, finite checkpoint of ``out`` (normally the one the pointer names)."""
    pointed = read_run_pointer(out)
    for ref in step_folders(out):
        problem = checkpoint_problem(ref)
        if problem is not None:
            log(f"skipping checkpoint {str(ref.folder)!r}: {problem}")
            continue
        if pointed is None or pointed[0] != ref.step:
            log(f"{RUN_POINTER_FILE} does not name the newest complete checkpoint; using {str(ref.folder)!r}")
        return ref
    return None


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a run's checkpoint (a step folder, a pointer, or an older ``checkpoint/``)."""
    legacy = out / RUN_LATEST
    return (
        bool(step_folders(out))
        or (out / RUN_POINTER_FILE).is_file()
        or (legacy.is_dir() and not legacy.is_symlink() and (legacy / STATE_FILE).is_file())
    )


# ---------------------------------------------------------------- start-up
def remove_stale_temporaries(out: Path, log: Log) -> list[str]:
    """Remove what an interrupted save left (temporary files and folders); returns their names.

    Only call this while holding the run's lock: another live run's temporaries look the same.
    """
    removed = []
    for folder in (out, out / RUN_CHECKPOINTS_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not is_temporary(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(str(entry.relative_to(out)))
    if removed:
        log(f"removed {len(removed)} temporary file(s) an interrupted save left in {str(out)!r}: {', '.join(removed)}")
    return removed


def migrate_legacy_checkpoint(out: Path, log: Log) -> None:
    """A ``checkpoint/`` folder (the layout before step folders, or a copy that followed the link) becomes
    a step folder, so the newest checkpoint is found in one place."""
    legacy = out / RUN_LATEST
    if legacy.is_symlink() or not legacy.is_dir():
        return
    try:
        step = read_json_state(legacy / STATE_FILE)["step"]
    except CheckpointError:
        return  # not a run's checkpoint: left alone
    target = out / RUN_CHECKPOINTS_DIR / step_folder_name(step)
    if target.exists():  # a copy of a step folder that is already there
        aside = legacy.with_name(f".{legacy.name}.old-{secrets.token_hex(4)}")
        legacy.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        target.parent.mkdir(exist_ok=True)
        legacy.rename(target)
        fsync_path(target.parent)
        log(f"moved the checkpoint of step {step} to {str(target)!r}")
    fsync_path(out)
    if read_run_pointer(out) is None:
        point_to(out, CheckpointRef(step, target))


def clear_run(out: Path) -> None:
    """Remove a previous run's checkpoints, pointer and link (``train.overwrite``); the pointer goes first,
    so a kill midway leaves no pointer naming a half-removed folder."""
    (out / RUN_POINTER_FILE).unlink(missing_ok=True)
    latest = out / RUN_LATEST
    if latest.is_symlink():
        latest.unlink()
    elif latest.is_dir():
        shutil.rmtree(latest)
    root = out / RUN_CHECKPOINTS_DIR
    if root.is_dir():
        aside = out / f".{RUN_CHECKPOINTS_DIR}.old-{secrets.token_hex(4)}"
        root.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_path(out)


def check_writable(out: Path) -> None:
    """Refuse an output folder the run could not save into, before any work (as root too: a probe file)."""
    probe = out / f".write-probe.tmp-{secrets.token_hex(4)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"train.output_dir {str(out)!r} is not writable ({exc.strerror or exc}); the run could not save its "
            "checkpoints. Choose a folder you can write to, or fix its permissions"
        ) from None


def open_run_folder(out: Path, lock: RunLock, *, resume: bool, overwrite: bool, log: Log) -> CheckpointRef | None:
    """Make ``out`` ready for a run (main process): writable, locked, cleaned of what a kill left; returns
    the checkpoint to resume from (None for a new run, after clearing a previous one when ``overwrite``)."""
    check_writable(out)
    lock.acquire(log)
    try:
        remove_stale_temporaries(out, log)
        migrate_legacy_checkpoint(out, log)
        if resume:
            ref = find_resume_checkpoint(out, log)
            if ref is None:
                raise TrainingError(
                    f"resume: {str(out)!r} holds no trainer checkpoint (no complete, finite step folder in "
                    f"{RUN_CHECKPOINTS_DIR}/); run without --resume to start a new run, or point train.output_dir "
                    "at the run to continue"
                )
            return ref
        if has_checkpoint(out) and not overwrite:
            raise TrainingError(
                f"{str(out)!r} already holds a checkpoint of a run; pass --resume (resume=True) to continue it, "
                "set train.overwrite = true to replace it, or choose another train.output_dir"
            )
        clear_run(out)
        from unimodel.training.state import METRICS_FILE

        (out / METRICS_FILE).unlink(missing_ok=True)
        return None
    except BaseException:
        lock.release()
        raise


# ------------------------------------------------------------------ saving
def point_to(out: Path, ref: CheckpointRef) -> None:
    """Make ``ref`` the run's checkpoint: the pointer file, then the link (each replaced atomically)."""
    rel = f"{RUN_CHECKPOINTS_DIR}/{ref.folder.name}"
    pointer = {"format": RUN_POINTER_FORMAT, "version": 1, "checkpoint": rel, "step": ref.step}
    data = (json.dumps(pointer, indent=2) + "\n").encode()
    write_file_durably(out / RUN_POINTER_FILE, data, before_replace=lambda: fault_point("pointer-written"))
    fault_point("pointer-replaced")
    link = out / RUN_LATEST
    if link.exists() and not link.is_symlink():
        return  # a real folder by that name is the user's: the pointer alone names the checkpoint
    tmp = out / f".{RUN_LATEST}.tmp-{secrets.token_hex(4)}"
    try:
        os.symlink(rel, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except (OSError, NotImplementedError):  # no symlinks here (some Windows setups): the pointer suffices
        tmp.unlink(missing_ok=True)
        return
    fsync_path(out)


def commit_checkpoint(out: Path, step: int, write: Callable[[Path], None], *, keep: int) -> CheckpointRef:
    """Write a checkpoint of ``step`` with ``write(folder)`` and make it the run's checkpoint, crash-safely.

    See the module docstring for the sequence. On an error the temporary folder is removed and the
    previous checkpoint stays the run's checkpoint.
    """
    root = out / RUN_CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = step_folder_name(step)
    tmp = root / f".{name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        fault_point("temp-folder")
        write(tmp)
        fault_point("files-written")
        fsync_tree(tmp)
        fault_point("files-synced")
        final = root / name
        if final.exists():  # left by a run that went past this step and was not resumed from there
            aside = root / f".{name}.old-{secrets.token_hex(4)}"
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(root)
    fault_point("folder-renamed")
    ref = CheckpointRef(step, final)
    point_to(out, ref)
    fault_point("link-replaced")
    prune(out, ref, keep)
    fault_point("pruned")
    return ref


def prune(out: Path, current: CheckpointRef, keep: int) -> None:
    """Remove step folders other than ``current`` and the ``keep - 1`` newest before it (folders past
    ``current`` belong to a timeline the run left); each is renamed to a temporary name first, so a
    kill midway never leaves a half-removed folder under a step name."""
    root = out / RUN_CHECKPOINTS_DIR
    older = [r for r in step_folders(out) if r.step < current.step][: max(keep - 1, 0)]
    kept = {current.folder.name, *(r.folder.name for r in older)}
    for entry in sorted(root.iterdir()):
        if step_of_folder(entry.name) is None or entry.name in kept:
            continue
        aside = root / f".{entry.name}.old-{secrets.token_hex(4)}"
        entry.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)


# -------------------------------------------------------------------- lock
class RunLock:
    """An exclusive lock on a run folder: ``train.lock`` holding the holder's pid, host and start time.

    The file is locked with ``flock`` while the run lives, so a lock whose process died (even by
    ``kill -9``) is free and is taken over with a message. Where ``flock`` is unavailable, a lock
    naming a dead pid on this host is taken over; any other is refused.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, log: Log) -> None:
        for _ in range(5):  # the file may be removed by its releasing holder between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                previous = self._read(fd)
                if not self._flock(fd, previous):
                    raise TrainingError(
                        f"{str(self.path.parent)!r} is in use by another training run ({_describe(previous)}); "
                        "two runs writing one output_dir would mix their checkpoints and metrics. Wait for it to "
                        "finish, stop it, or choose another train.output_dir"
                    )
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if previous.get("pid") not in (None, os.getpid()):
                log(f"taking over the stale lock of a run that is gone ({_describe(previous)})")
            record = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return
        raise TrainingError(f"could not take the lock {str(self.path)!r}: it kept changing; try again")

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        raw = os.pread(fd, 4096, 0)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _flock(fd: int, previous: dict[str, Any]) -> bool:
        """Take the OS lock; False when a live process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows
            return not _alive_here(previous)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # a file system without flock
            return not _alive_here(previous)
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _alive_here(record: dict[str, Any]) -> bool:
    """Whether ``record`` names a live process; a record of another host counts as alive (it cannot be
    checked from here)."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    if record.get("hostname") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(record: dict[str, Any]) -> str:
    pid, host, started = record.get("pid", "?"), record.get("hostname", "?"), record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {pid} on host {host}, started {when}"


__all__ = [
    "FAULT_ENV",
    "FAULT_EXIT_CODE",
    "LOCK_FILE",
    "REQUIRED_FILES",
    "SAVE_POINTS",
    "CheckpointRef",
    "InjectedFault",
    "RunLock",
    "check_writable",
    "checkpoint_problem",
    "clear_run",
    "commit_checkpoint",
    "fault_point",
    "find_resume_checkpoint",
    "has_checkpoint",
    "is_temporary",
    "migrate_legacy_checkpoint",
    "open_run_folder",
    "point_to",
    "prune",
    "remove_stale_temporaries",
    "step_folder_name",
    "step_folders",
]
