"""One resumable output file: HDF5 filled as ``<out>.partial``, renamed to ``out`` when done.

cellprof's two long writers, the crop store (:mod:`cellprof.formats.store`) and the
profiles file (:mod:`cellprof.formats.profiles`), fill one HDF5 file for minutes or hours,
and a kill must cost at most the rows being written. Both use :class:`PartialFile`, so
each guarantee is made once:

* **One writer per output**: :class:`~cellprof.formats.safeio.OutputLock` on ``out`` from
  opening to :meth:`PartialFile.finish` or :meth:`PartialFile.close`.
* **What a resume must match**, in two root attributes: ``config`` (JSON of the settings)
  and ``inputs`` (:func:`~cellprof.formats.safeio.fingerprint` of the input files). A partial
  file that differs in either is started over, and the reason logged.
* **Committed counts**: root attributes (the store's ``n_cells``, ``n_fields``,
  ``n_issues``; the profiles' ``n_done``) that :meth:`PartialFile.commit` writes only after
  the rows they cover are flushed. Rows past them are uncommitted: a resume redoes them.
  A file is laid out before its counts are first written, so one cut off while being laid
  out has none and is started over.
* **Resume through a copy**: a kill during an HDF5 flush can tear the file's heap or chunk
  index. Reading such a file has raised ``OSError: bad heap index``, ``RuntimeError`` and
  crashed the interpreter, and a file whose committed rows still read can fail later, when
  new rows are written into its damaged heap. So a resume never writes into the old file:
  a child process (which takes the risk of the crash) checks its settings and copies its
  committed part into a fresh file that replaces it (:func:`rebuild_partial`); whatever
  fails there means a clean start, never a crash.
* **Durable completion**: ``complete = True``, then
  :func:`~cellprof.formats.safeio.durable_replace` to the final name.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py

from cellprof import __version__
from cellprof.errors import StoreError
from cellprof.formats import chunks
from cellprof.formats.safeio import OutputLock, durable_replace, fingerprint_change, partial_path

log = logging.getLogger("cellprof")

MISMATCH = 3
"""The rebuild child's exit status for "settings or inputs differ" (not damage)."""


def as_json(value: Mapping[str, Any] | None) -> str:
    """The canonical JSON of a config or fingerprint, as compared on resume."""
    return json.dumps(dict(value or {}), sort_keys=True, default=str)


class PartialFile:
    """``<path>.partial``, resumed or laid out anew, locked until finished or closed.

    Parameters
    ----------
    path
        Final output path.
    format
        The file's ``format`` attribute (``cellprof-crops``, ``cellprof-profiles``).
    config, inputs
        What a resume must match (kept as the ``config`` and ``inputs`` attributes).
    counts
        Top-level dataset or group name -> root attribute counting its committed rows
        (along axis 0; in a group, of each of its datasets). Objects not named are copied
        whole on resume.
    create
        Lays out a new file (datasets, groups, format-specific attributes).
    resume
        Continue an existing partial file with the same format, config and inputs; False
        always starts over.

    After construction :attr:`file` is open for appending; :attr:`resumed` says whether it
    continues an earlier run, :attr:`restart_reason` why an earlier partial file was not.
    """

    def __init__(self, path: str | Path, *, format: str, config: Mapping[str, Any],
                 inputs: Mapping[str, Any] | None, counts: Mapping[str, str],
                 create: Callable[[h5py.File], None], resume: bool = True) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.counts = dict(counts)
        self.resumed = False
        self.restart_reason: str | None = None
        self.file: h5py.File | None = None
        self._lock = OutputLock(self.path).acquire()
        try:
            self._open(format, as_json(config), as_json(inputs), create, resume)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, format: str, config: str, inputs: str,
              create: Callable[[h5py.File], None], resume: bool) -> None:
        if resume and self.tmp.exists():
            expect = {"format": format, "config": config, "inputs": inputs,
                      "counts": self.counts}
            self.restart_reason = rebuild_partial(self.tmp, expect)
            if self.restart_reason is None:
                self.file = h5py.File(self.tmp, "a")
                self.resumed = True
                return
            log.warning("%s: starting over: %s", self.tmp, self.restart_reason)
        self.tmp.unlink(missing_ok=True)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update(
            format=format, config=config, inputs=inputs, complete=False,
            cellprof_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        create(self.file)
        self.commit(**{attr: 0 for attr in self.counts.values()})

    def count(self, attr: str) -> int:
        """A committed count (``n_cells``, ``n_done``, ...)."""
        return int(self.file.attrs[attr])

    def commit(self, **counts: int) -> None:
        """Record ``counts`` after flushing the rows they cover: a kill before the second
        flush leaves the earlier counts, whose rows are intact."""
        self.file.flush()
        self.file.attrs.update(counts)
        self.file.flush()

    def finish(self, **attrs: Any) -> Path:
        """Set ``attrs`` and ``complete``, close, and rename durably to the final path."""
        self.file.attrs.update(attrs)
        self.file.attrs["complete"] = True
        self.file.close()
        durable_replace(self.tmp, self.path)
        self._lock.release()
        return self.path

    def close(self) -> None:
        """Close without finishing (the ``.partial`` file stays for a resume)."""
        try:
            if self.file is not None and self.file.id.valid:
                self.file.close()
        finally:
            self._lock.release()


def rebuild_partial(path: str | Path, expect: Mapping[str, Any]) -> str | None:
    """Check a partial file against ``expect`` and copy its committed part into a fresh
    file, in a child process; None when done, else why the file cannot be continued.

    ``expect`` holds ``format``, ``config`` and ``inputs`` (JSON text, compared with the
    file's attributes) and ``counts`` (as :class:`PartialFile`'s). The child reads it from
    its standard input: a config can outgrow a command line.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    code = "import sys, cellprof.formats.partial as p; p._rebuild_main(sys.argv[1])"
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], env=env,
                           input=json.dumps(dict(expect)), capture_output=True, text=True,
                           timeout=24 * 3600)
    except subprocess.TimeoutExpired:
        return "copying its committed part took over a day"
    finally:
        Path(str(path) + ".rebuild").unlink(missing_ok=True)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    if r.returncode == 0:
        return None
    if r.returncode == MISMATCH and lines:
        return lines[-1]
    if r.returncode < 0:
        why = f"reading it crashed with signal {-r.returncode}"
    else:
        why = lines[-1][:200] if lines else f"reading it failed (status {r.returncode})"
    return f"the partial file is damaged ({why}), as a hard kill can leave it"


class _Mismatch(Exception):
    """The partial file is sound but was written for another run."""


def _rebuild_main(path: str) -> None:
    """The child's side of :func:`rebuild_partial`."""
    try:
        _rebuild(path, json.load(sys.stdin))
    except _Mismatch as exc:
        print(exc, file=sys.stderr)
        sys.exit(MISMATCH)


def _mismatch(attrs: h5py.AttributeManager, expect: Mapping[str, Any]) -> str | None:
    """Why a partial file's attributes do not continue the run ``expect`` describes."""
    if attrs.get("format") != expect["format"]:
        return f"it is not a partial {expect['format']} file"
    saved = attrs.get("inputs")
    if saved != expect["inputs"]:  # first: a changed input also explains changed settings
        return (fingerprint_change(json.loads(saved), json.loads(expect["inputs"]))
                if saved else None) or "its inputs changed"
    if attrs.get("config") != expect["config"]:
        return "it was written with other settings"
    return None


def _rebuild(path: str, expect: Mapping[str, Any]) -> None:
    tmp = path + ".rebuild"
    with h5py.File(path, "r") as src:
        why = _mismatch(src.attrs, expect)
        if why:
            raise _Mismatch(why)
        rows = {name: int(src.attrs[attr]) for name, attr in expect["counts"].items()}
        missing = sorted(set(rows) - set(src))
        if missing:
            raise StoreError(f"/{missing[0]} is missing")
        with h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            for name in list(src):  # a list: iterating a group holds h5py's lock
                _copy(src[name], dst, rows.get(name))
    durable_replace(tmp, path)


def _copy(obj: h5py.Group | h5py.Dataset, parent: h5py.Group, count: int | None) -> None:
    """Copy ``obj`` into ``parent`` with its attributes: a dataset's first ``count`` rows (all
    when None; an extendable one shrinks to them), a group's datasets each so."""
    name = obj.name.rsplit("/", 1)[1]
    if isinstance(obj, h5py.Group):
        group = parent.create_group(name)
        group.attrs.update(dict(obj.attrs))
        for child in list(obj):
            _copy(obj[child], group, count)
        return
    if obj.ndim == 0:
        parent.create_dataset(name, data=obj[()])
    else:
        rows = obj.shape[0]
        keep = rows if count is None else count
        if keep > rows:
            raise StoreError(f"{obj.name} holds {rows} rows, {keep} committed")
        shape = (keep if obj.maxshape[0] is None else rows,) + obj.shape[1:]
        new = parent.create_dataset(
            name, shape=shape, dtype=obj.dtype, chunks=obj.chunks,
            maxshape=obj.maxshape if obj.chunks else None, compression=obj.compression,
            compression_opts=obj.compression_opts, shuffle=obj.shuffle,
            fletcher32=obj.fletcher32, scaleoffset=obj.scaleoffset)
        chunks.copy_rows(obj, new, keep)
    parent[name].attrs.update(dict(obj.attrs))
