"""A folder of images with no tables -> the image table CellProfiler would have written.

A lab without a CellProfiler pipeline has a folder of one-channel images whose names say
which field and channel each holds (``B02_s1_DNA.tif``). A file-name pattern names those
parts, ``{well}_s{site}_{channel}.tif``: ``{plate}``, ``{well}``, ``{site}`` become
``Metadata_Plate/Well/Site``, ``{channel}`` the ``FileName_<channel>/PathName_<channel>``
columns, any other ``{name}`` a ``Metadata_name`` column. Without a pattern a few common
ones are tried, then channels told apart by the last ``_`` part of the names; one is used
only when it reads every image file one way, with the same channels in every field.

The table is written beside the crop store (``crops.h5.Image.csv``) so the user can read
what was understood, edit it, and crop from it again as from any image table. Nothing is
guessed silently: what was built, and from which pattern, is said in the run's notes, and
image files no pattern reads are listed in the issue log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.images import TIFF_SUFFIXES
from cellprof.formats.safeio import write_text
from cellprof.formats.schema import PLATE, SITE, WELL
from cellprof.prepare.fieldwork import issue
from cellprof.prepare.tables import is_nuclear

IMAGE_SUFFIXES = frozenset(TIFF_SUFFIXES | {".png"})
"""Files of a folder that are read as images; anything else in it is ignored."""
_KEYS = {"plate": PLATE, "well": WELL, "site": SITE}
_TOKEN = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
# What a part may hold: a site is a number; a well (A01, r01c01) never holds "_" or "/", so
# "{plate}_{well}" splits Week1_P01_B02 one way; anything else is any run of characters.
_PARTS = {"site": r"\d+", "well": r"[^/_]+", "": r"[^/]+"}
DEFAULT_PATTERNS = ("{plate}/{well}_s{site}_{channel}", "{well}_s{site}_{channel}",
                    "{plate}_{well}_s{site}_{channel}")
"""Tried in order when no pattern is given (ImageXpress-style names, e.g. ``B02_s1_w1.tif``,
alone or in a folder per plate); the suffix is any image suffix."""
_BY_SUFFIX = "{well}_{channel}"  # the last resort: channel = the last "_" part of the name
_SUFFIX_PARTS = {"well": r"[^/]+", "channel": r"[^/_]+"}
_EXAMPLE = '--pattern "{well}_s{site}_{channel}.tif"'


@dataclass(frozen=True)
class FolderTable:
    """An image table built from a folder, and what went into it."""

    table: pd.DataFrame
    """One row per field: ``ImageNumber``, ``Metadata_*``, ``FileName_/PathName_<channel>``."""
    pattern: str
    given: bool
    """Whether the user gave the pattern (else it was found)."""
    channels: list[str]
    n_matched: int
    unmatched: list[Path] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    """How parts the pattern lacks were filled in (plate from the folder's name …)."""

    def summary(self, folder: Path, written: Path) -> str:
        """One note saying what was built: fields, channels, files matched and not."""
        t = self.table
        how = "--pattern" if self.given else "found; give --pattern to choose another"
        wells = t.groupby([PLATE, WELL]).size()
        text = (f"{folder}: built the image table {written} with pattern {self.pattern} "
                f"({how}): {_n(len(t), 'field')} ({_n(t[PLATE].nunique(), 'plate')}, "
                f"{_n(len(wells), 'well')}, {_n(int(wells.max()), 'site')} a well at most), "
                f"channels {', '.join(self.channels)}; {_n(self.n_matched, 'image file')} "
                f"matched, {len(self.unmatched)} did not")
        if self.unmatched:
            text += " (listed in the issue log as unmatched_file)"
        return "; ".join([text, *self.said]) + (f"; edit {written.name} and crop from it "
                                                "to change what was read")


def build_image_table(folder: str | Path, pattern: str | None = None) -> FolderTable:
    """The image table of a folder of one-channel images (see the module docstring).

    ``pattern`` is matched against each image file's name, or its path under ``folder``
    when it holds a ``/``; without an image suffix of its own it matches any (``.tif``,
    ``.TIFF``, ``.png`` …). Letters match in either case.

    Raises
    ------
    InputError
        When the folder holds no image, the pattern is malformed or matches no file, a
        file reads two ways under it, or two files read as the same field and channel;
        without ``pattern``, when no default pattern reads every file.

    Examples
    --------
    >>> build_image_table("images", "{well}_s{site}_{channel}.tif").channels  # doctest: +SKIP
    ['Cell', 'DNA', 'PH3']
    """
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise InputError(f"{folder}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                         " in it or its sub-folders")
    if pattern is not None:
        reads, unmatched = _read_names(folder, files, pattern, {})
        if not reads:
            raise InputError(f"{folder}: no image file matches --pattern {pattern} (e.g. "
                             f"{_some(folder, files)}); see docs/cli.md#crop")
        return _table(folder, pattern, True, reads, unmatched)
    return _guess(folder, files)


def _guess(folder: Path, files: list[Path]) -> FolderTable:
    """The table of the first default pattern that reads every file one way, with the same
    channels in every field; else channels by the names' last ``_`` part, on the same terms.

    Raises
    ------
    InputError
        When none does, naming the pattern that came closest and the files it missed.
    """
    closest: tuple[int, str, list[Path]] = (0, "", [])
    for candidate, parts in [(p, {}) for p in DEFAULT_PATTERNS] + [(_BY_SUFFIX, _SUFFIX_PARTS)]:
        try:
            reads, unmatched = _read_names(folder, files, candidate, parts)
        except InputError:  # a name read two ways, or two files as one: not this pattern
            continue
        if not reads or not _same_channels(reads):
            continue
        if parts and len({r["channel"].lower() for _, r in reads}) < 2:
            continue  # one "channel" in every name: the last part is not a channel
        if unmatched:
            if len(reads) > closest[0] and not parts:
                closest = (len(reads), candidate, unmatched)
            continue
        built = _table(folder, candidate, False, reads, [])
        if parts:
            built.said.insert(0, "channels told apart by the last _ part of each name, the "
                                 "rest of the name taken as the well")
        return built
    near = ""
    if closest[0]:
        n, candidate, missed = closest
        near = (f"; the closest, {candidate}, reads {n} of them but not "
                f"{_some(folder, missed)}{' …' if len(missed) > 3 else ''}: --pattern "
                f"\"{candidate}\" uses it and logs the others")
    raise InputError(f"{folder}: cannot tell fields and channels apart in the names of its "
                     f"{len(files)} image files (e.g. {_some(folder, files)}): give a pattern, "
                     f"e.g. {_EXAMPLE} (docs/cli.md#crop){near}")


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted; hidden files (``.DS_Store``, macOS's
    ``._B02.tif`` copies of resource forks) are no images of the screen."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(s.startswith(".") for s in p.relative_to(folder).parts)
                  and p.is_file())


def compile_pattern(pattern: str, parts: dict[str, str] | None = None,
                    lazy: bool = False) -> tuple[re.Pattern[str], list[str]]:
    """``pattern``'s regular expression and its part names in order; ``lazy`` parts take
    the shortest text they can, otherwise the longest (a name read the same both ways
    is read one way only).

    Raises
    ------
    InputError
        When the pattern names no ``{channel}``, a part twice, or a part that is no name.
    """
    parts = {**_PARTS, **(parts or {})}
    names, regex, at = [], "", 0
    for m in _TOKEN.finditer(pattern):
        name = m.group(1)
        if not _NAME.match(name):
            raise InputError(f"--pattern {pattern}: {{{name}}} is not a part name (letters, "
                             "digits and _, e.g. {well})")
        key = name.lower() if name.lower() in (*_KEYS, "channel") else name
        if key in names:
            raise InputError(f"--pattern {pattern}: {{{name}}} appears twice")
        names.append(key)
        regex += re.escape(pattern[at:m.start()])
        regex += f"(?P<{key}>{parts.get(key, parts[''])}{'?' if lazy else ''})"
        at = m.end()
    rest = pattern[at:]
    if any(c in _TOKEN.sub("", pattern) for c in "{}"):
        raise InputError(f"--pattern {pattern}: a {{ or }} without its pair")
    if "channel" not in names:
        raise InputError(f"--pattern {pattern}: names no {{channel}} (which part of a file "
                         f"name says its channel, e.g. {_EXAMPLE})")
    regex += re.escape(rest)
    if not _has_suffix(pattern):
        regex += r"\.[^./]+"
    return re.compile(regex, re.IGNORECASE), names


def _has_suffix(pattern: str) -> bool:
    return any(pattern.lower().endswith(s) for s in IMAGE_SUFFIXES)


def _read_names(folder: Path, files: list[Path], pattern: str, parts: dict[str, str]
                ) -> tuple[list[tuple[Path, dict[str, str]]], list[Path]]:
    """Each matching file with its parts, and the files that match not."""
    greedy, _ = compile_pattern(pattern, parts)
    lazy, _ = compile_pattern(pattern, parts, lazy=True)
    reads, unmatched = [], []
    for path in files:
        text = path.relative_to(folder).as_posix() if "/" in pattern else path.name
        m, other = greedy.fullmatch(text), lazy.fullmatch(text)
        if m is None:
            unmatched.append(path)
            continue
        if m.groupdict() != other.groupdict():
            raise InputError(f"{path}: reads two ways under --pattern {pattern} "
                             f"({_said(m.groupdict())}, or {_said(other.groupdict())}); put "
                             "a fixed separator between the parts")
        reads.append((path, m.groupdict()))
    _refuse_repeats(reads, pattern)
    return reads, unmatched


def _said(parts: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in parts.items())


def _refuse_repeats(reads: list[tuple[Path, dict[str, str]]], pattern: str) -> None:
    """Two files read as one field's one channel: refused, naming both."""
    seen: dict[tuple[tuple[str, str], ...], Path] = {}
    for path, parts in reads:
        key = tuple(sorted((k, _norm(k, v)) for k, v in parts.items()))
        if key in seen:
            raise InputError(f"{seen[key]} and {path} both read as {_said(parts)} under "
                             f"--pattern {pattern}: a field has one file per channel; make "
                             "the pattern name the part of the names that tells them apart "
                             "(e.g. {plate}/ for a folder per plate)")
        seen[key] = path


def _norm(key: str, value: str) -> str:
    """Site 01 and site 1 are one site; channel DNA and dna one channel."""
    if key == "site":
        return str(int(value))
    return value.lower() if key == "channel" else value


def _same_channels(reads: list[tuple[Path, dict[str, str]]]) -> bool:
    """Whether every field has the same channels (a guessed pattern must say so)."""
    fields: dict[tuple[tuple[str, str], ...], set[str]] = {}
    for _, parts in reads:
        key = tuple((k, v) for k, v in parts.items() if k != "channel")
        fields.setdefault(key, set()).add(parts["channel"].lower())
    return len({frozenset(c) for c in fields.values()}) == 1


def _natural(text: str) -> list[Any]:
    """Sort key: w2 before w10, A2 before A10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower())
            for t in re.split(r"(\d+)", str(text))]


def _table(folder: Path, pattern: str, given: bool, reads: list[tuple[Path, dict[str, str]]],
           unmatched: list[Path]) -> FolderTable:
    """One row per field, in plate, well, site order; parts the pattern lacks filled in
    and said."""
    named = reads[0][1]
    channel_of: dict[str, str] = {}  # one spelling per channel (the first met)
    for _, parts in reads:
        channel_of.setdefault(parts["channel"].lower(), parts["channel"])
    # The DNA stain first, as the paper's crops and `measure` (its nucleus) and `show`
    # (blue) take it; the others by name, w2 before w10.
    channels = sorted(channel_of.values(), key=lambda c: (not is_nuclear(c), _natural(c)))
    others = [k for k in named if k not in (*_KEYS, "channel")]
    plate = folder.resolve().name
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, parts in reads:
        key = tuple(_norm(k, v) for k, v in parts.items() if k != "channel")
        row = rows.setdefault(key, {
            PLATE: parts.get("plate", plate), WELL: parts.get("well", ""),
            SITE: int(parts.get("site", 0)), **{f"Metadata_{k}": parts[k] for k in others}})
        ch = channel_of[parts["channel"].lower()]
        row[f"FileName_{ch}"] = path.name
        row[f"PathName_{ch}"] = str(path.parent.resolve())
    meta = [PLATE, WELL, SITE, *(f"Metadata_{k}" for k in others)]
    ordered = sorted(rows.values(), key=lambda r: [_natural(r[c]) for c in meta])
    table = pd.DataFrame(ordered).reindex(
        columns=[*meta, *(f"{k}_{ch}" for ch in channels for k in ("FileName", "PathName"))])
    said = []
    if "plate" not in named:
        said.append(f"no {{plate}} in the pattern: the plate is the folder's name, {plate}")
    if "well" not in named:
        said.append("no {well} in the pattern: every field is in one well")
    if "site" not in named:
        table[SITE] = table.groupby([PLATE, WELL]).cumcount() + 1
        said.append("no {site} in the pattern: sites numbered 1, 2 … within each well")
    for ch in channels:  # a field without a file of a channel: an empty name, reported
        table[[f"FileName_{ch}", f"PathName_{ch}"]] = \
            table[[f"FileName_{ch}", f"PathName_{ch}"]].fillna("")
        missing = int((table[f"FileName_{ch}"] == "").sum())
        if missing:
            said.append(f"{missing} fields have no {ch} file")
    table.insert(0, "ImageNumber", range(1, len(table) + 1))
    return FolderTable(table, pattern, given, channels, len(reads), unmatched, said)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _some(folder: Path, files: list[Path], n: int = 3) -> str:
    return ", ".join(p.relative_to(folder).as_posix() for p in files[:n])


def built_table_path(out: str | Path) -> Path:
    """Where the table built for crop store ``out`` is written: ``crops.h5.Image.csv``."""
    out = Path(out)
    return out.with_name(out.name + ".Image.csv")


def write_image_table(table: pd.DataFrame, path: Path, overwrite: bool) -> None:
    """Write a built table, unless ``path`` holds another one: the user may have edited
    it, and a rerun must not throw that away unasked (``overwrite`` replaces it)."""
    text = table.to_csv(index=False)
    if path.is_file() and not overwrite and path.read_text() != text:
        raise InputError(f"{path}: exists and differs from the table built now (edited?): "
                         f"crop from it (cellprof crop {path} --segment …), or pass "
                         "--overwrite to build it again")
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)


def is_image(path: str | Path) -> bool:
    """Whether a file is an image (by suffix, or a TIFF's or PNG's first bytes)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(8)
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") or \
        head == b"\x89PNG\r\n\x1a\n"


def table_input(given: str | Path, out: str | Path, pattern: str | None, overwrite: bool,
                notes: list[str], tables: Iterable[tuple[str, str | Path | None]] = ()
                ) -> tuple[Path, list[dict[str, Any]]]:
    """The image table a crop reads, and issues to log: ``given`` itself, or, for a folder,
    the table built from it (:func:`build_image_table`), written beside ``out``, with its
    image files that match no pattern as ``unmatched_file`` issues.

    An image given where a table is expected (``given``, or one of ``tables``: option name
    and path) is refused in one line, rather than read as text."""
    given = Path(given)
    for option, path in [("the image table", given), *tables]:
        if path is not None and is_image(path):
            raise InputError(f"{path}: is an image, not a table: {option} must be a CSV, "
                             "Parquet or SQLite table; to crop a folder of images, give the "
                             f"folder, e.g. cellprof crop {Path(path).parent} {_EXAMPLE} "
                             "--segment")
    if not given.is_dir():
        if pattern is not None:
            raise InputError(f"--pattern reads the file names of a folder of images; "
                             f"{given} is not a folder")
        return given, []
    built = build_image_table(given, pattern)
    path = built_table_path(out)
    write_image_table(built.table, path, overwrite)
    notes.append(built.summary(given, path))
    said = f"matches no --pattern {built.pattern}" if built.given else \
        f"matches not the pattern found, {built.pattern}"
    return path, [issue("unmatched_file", f, -1, said) for f in built.unmatched]
