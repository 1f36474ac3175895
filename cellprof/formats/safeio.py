"""Safe outputs: atomic files, one writer per output, outputs never inputs, input fingerprints.

Every cellprof writer goes through this module, so each guarantee is made once:

* **Atomic files** (:func:`atomic_path`, :func:`write_text`): a file is written under a
  temporary name beside its final one and renamed with :func:`os.replace` only when
  complete, so a reader never sees half a file; a failed write removes the temporary.
  The rename is durable (:func:`durable_replace`): the file is synced before it and the
  folder after, so a finished output survives a power cut, not only a killed process.
  :func:`private_atomic_path` gives each run a temporary name of its own.
* **Output locks** (:class:`OutputLock`): an exclusive ``fcntl.flock`` on ``<out>.lock``
  while a command writes ``out``. Two runs into one output would interleave (two
  trainings each logging every step, two crops racing for one rename); the second is
  refused with a message naming the output. The kernel drops the lock when its process
  dies, so a killed run never leaves a stale lock behind.
* **Same-file checks** (:func:`refuse_inputs`): an output that resolves to one of the
  inputs (``merge a.h5 --out a.h5``, ``crop --out Image.csv``) is refused before anything
  is opened for writing, so ``--overwrite`` can never destroy what it reads.
* **Input fingerprints** (:func:`fingerprint`): size, modification time and a hash of
  each input's content (tables) or of its attributes (HDF5 stores). A resumable writer
  saves them beside its partial output and starts over, saying why, when they changed:
  a resume that trusted paths alone would mix results of two different inputs. Many small
  files (a folder of crops) are fingerprinted by size and time (:func:`files_fingerprint`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellprof.errors import InputError

log = logging.getLogger("cellprof")

HASH_BYTES = 1 << 20
"""Read size when hashing a file."""


def partial_path(path: str | Path) -> Path:
    """The temporary name an output is written under until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` if the block succeeds.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic)
    and is removed when the block raises. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def private_atomic_path(path: str | Path) -> Iterator[Path]:
    """:func:`atomic_path` whose temporary file is this run's own.

    :func:`atomic_path`'s one temporary name per output means two runs into one output
    write through the same file, and the first to finish renames the other's half into
    place. Here the name is ``.<pid>-<random>.<name>`` beside ``path``: hidden, unique to
    the run, and ending as ``path`` does, so a writer that picks its format by suffix
    (``.csv.gz``, ``.parquet``) picks the same one. The last run to finish wins whole.

    Another run's temporary file whose process no longer runs here is a leftover of a killed
    run (no ``finally`` runs after SIGKILL or a power cut): it is removed, rather than left to
    pile up beside the output. One of a live process is left alone.
    """
    import secrets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{os.getpid()}-{secrets.token_hex(4)}.{path.name}")
    try:
        yield tmp
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(path: str | Path) -> list[Path]:
    """The temporary files :func:`private_atomic_path` names for ``path`` (``.<pid>-<8 hex
    digits>.<name>`` beside it) whose process no longer runs on this machine."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(r"\.(\d+)-[0-9a-f]{8}\." + re.escape(path.name))
    found = ((p, pattern.fullmatch(p.name)) for p in path.parent.iterdir())
    return sorted(p for p, m in found if m and not _running(int(m.group(1))))


def _running(pid: int) -> bool:
    """Whether a process of that id runs here (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """``os.replace(tmp, path)`` that a power cut cannot undo or tear.

    A rename alone survives a killed process, but after a power cut the file system may
    have kept the new name without the file's data (a finished file of zeros) or lost the
    rename. So the file's data is synced before the rename and the folder's entry after it.
    Syncing a folder is best effort: some platforms and file systems refuse it, and the
    rename is still atomic there.
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (non-JSON values as strings)."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class OutputLock:
    """Exclusive lock on an output while one command writes it.

    ``OutputLock(out)`` locks ``<out>.lock`` (``<out>/.lock`` when ``out`` is a folder,
    e.g. a training run). Use as a context manager; a second holder is refused at once
    with :class:`InputError`. The lock file is removed on release.
    """

    def __init__(self, out: str | Path, *, folder: bool = False) -> None:
        out = Path(out)
        self.out, self.folder = out, folder
        self.path = out / ".lock" if folder else out.with_name(out.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if self.folder and self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} is a file; this command writes a folder")
        if not self.folder and self.out.is_dir():
            raise InputError(f"--out {self.out} is a folder; give a file name, e.g. "
                             f"{self.out / 'out.h5'}")
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise InputError(f"--out {self.out}: {folder} is a file, not a folder")
                break
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_pid(self.path)
                raise InputError(
                    f"{self.out}: another cellprof process{holder} is writing it; wait for "
                    f"it to finish or choose another --out") from None
            # The previous holder may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file, and must lock the new one instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def refuse_inputs(out: str | Path, inputs: Iterable[str | Path | None],
                  option: str = "--out") -> None:
    """Raise :class:`InputError` if ``out`` (or its temporary name) is one of ``inputs``.

    Compares files, not spellings (``os.path.samefile``), so ``./a.h5``, an absolute path
    and a hard link all count; inputs that do not exist are skipped.
    """
    out = Path(out)
    targets = [p for p in (out, partial_path(out)) if p.exists()]
    if not targets:
        return
    for inp in inputs:
        if inp is None:
            continue
        for target in targets:
            try:
                same = os.path.samefile(target, inp)
            except OSError:
                continue
            if same:
                raise InputError(f"{option} {out} is the input {inp}: writing it would "
                                 "destroy what is being read; choose another output path")


def refuse_repeats(paths: Iterable[str | Path], what: str) -> None:
    """Raise :class:`InputError` if one file is given twice (its data would count twice)."""
    seen: list[Path] = []
    for p in map(Path, paths):
        for q in seen:
            try:
                if os.path.samefile(p, q):
                    raise InputError(f"{what}: {p} is given twice (as {q}); each file's data "
                                     "would be counted twice")
            except OSError:
                continue
        seen.append(p)


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BYTES):
            h.update(block)
    return h.hexdigest()


def store_hash(path: str | Path) -> str:
    """SHA-256 of an HDF5 file's root attributes (a store's identity: its creation time,
    counts, channels and settings), which avoids hashing gigabytes of crops."""
    import h5py
    import numpy as np

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for key in sorted(f.attrs):
            value = f.attrs[key]
            if isinstance(value, np.ndarray):
                value = value.tolist()
            h.update(f"{key}={value!r};".encode())
    return h.hexdigest()


def fingerprint(inputs: dict[str, str | Path | None]) -> dict[str, Any]:
    """Identity of each named input: resolved path, size, mtime and a content hash.

    A resume compares everything but the mtime: a file copied or touched with the same
    content is the same input.

    Tables are hashed whole; HDF5 files (``.h5``, ``.hdf5``) by their attributes.
    Missing inputs (None) are recorded as None.
    """
    out: dict[str, Any] = {}
    for name, path in inputs.items():
        if path is None:
            out[name] = None
            continue
        p = Path(path)
        st = p.stat()
        h5 = p.suffix.lower() in (".h5", ".hdf5")
        out[name] = {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "hash": store_hash(p) if h5 else file_hash(p)}
    return out


def files_fingerprint(root: str | Path, paths: Iterable[str | Path]) -> dict[str, Any]:
    """Identity of many files (a folder of single-cell crops) from their sizes and
    modification times, in the form :func:`fingerprint` gives one input.

    Hashing every crop's content would read the whole data set again before a resume;
    a size and a modification time per file cost one ``stat`` and catch a crop replaced,
    added, removed or converted. ``path`` is ``root``; ``files`` counts the paths and
    ``hash`` covers each one's name, size and time, in the order given (a missing file
    counts as size -1).
    """
    h, n = hashlib.sha256(), 0
    for p in paths:
        try:
            st = os.stat(p)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        h.update(f"{p}\0{size}\0{mtime}\n".encode())
        n += 1
    return {"path": str(Path(root).resolve()), "files": n, "hash": h.hexdigest()}


def fingerprint_change(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why ``now`` differs from ``saved`` (e.g. "Nuclei.csv changed"), or None if the same."""
    if saved is None:
        return "the partial output records no input fingerprint"

    def strip(d: dict[str, Any] | None) -> dict[str, Any] | None:
        """Without the mtime: a copy or a touch with equal content is the same input."""
        return {k: v for k, v in d.items() if k != "mtime_ns"} if d else d

    changed = []
    for name, fp in now.items():
        old = saved.get(name)
        if strip(old) == strip(fp):
            continue
        # one file by its name; a set of files (files_fingerprint) by what it is
        label = Path(fp["path"]).name if fp and "files" not in fp else name
        if old is None or fp is None:
            changed.append(f"{name} {'added' if old is None else 'removed'}")
        elif old.get("hash") != fp.get("hash") or old.get("size") != fp.get("size"):
            changed.append(f"{label} changed")
        else:
            changed.append(f"{name} is now {fp['path']}")
    return ", ".join(changed) if changed else None
