"""Crops killed at many points finish identical to an uninterrupted run, cell by cell.

A hard kill (``kill -9``, an out-of-memory killer, a cluster's time limit) can land in
the middle of an HDF5 flush and tear the ``.partial`` file's heap. These tests kill real
``cellprof crop`` processes at spread-out moments, rerun the same command, and compare
the finished store with a clean run. The reduced loop runs in CI; the full one is

    python -m pytest -m killloop tests/test_crop_kills.py -s

and prints its figures (runs, kill points, stores identical to the clean run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.formats import store


@dataclass
class LoopFigures:
    runs: int
    kill_points: list[float]
    killed_mid_run: int
    late_kills: int
    """Kills that came after the run had finished, each redone at half the delay."""
    resumed: list[int]
    """Fields each rerun took over from its killed run's partial file."""
    torn_restarts: int
    """Reruns that found the partial file damaged and started over."""
    identical: int


LAUNCH = ("import multiprocessing, sys; multiprocessing.set_start_method(sys.argv.pop(1)); "
          "from cellprof.cli import main; main()")
"""``python -c LAUNCH <start method> crop ...``: the CLI with its workers started that way."""


def crop_cmd(screen: Path, out: Path, *extra: str, start_method: str | None = None
             ) -> list[str]:
    head = ["-m", "cellprof"] if start_method is None else ["-c", LAUNCH, start_method]
    return [sys.executable, *head, "crop", str(screen / "Image.csv"), "--objects",
            str(screen / "Nuclei.csv"), "--size", "40", "--out", str(out), *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def same_store(a: Path, b: Path) -> bool:
    try:
        np.testing.assert_array_equal(store.read_crops(a), store.read_crops(b))
        pd.testing.assert_frame_equal(store.read_cells(a), store.read_cells(b))
        pd.testing.assert_frame_equal(store.read_fields(a), store.read_fields(b))
        pd.testing.assert_frame_equal(store.read_issues(a), store.read_issues(b))
    except AssertionError:
        return False
    return True


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until ``path`` appears (cropping has begun) or the process ends."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.01)


def kill_mid_run(cmd: list[str], out: Path, delay: float, sig: int) -> bool:
    """Run ``cmd`` and send it ``sig`` ``delay`` s after its ``.partial`` appears; True
    when that left a partial store (the kill landed mid-run), False when the run had
    already finished (its store is then removed)."""
    proc = start(cmd)
    wait_for(store.partial_path(out), proc)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait()
    if out.exists():
        out.unlink()
        return False
    assert store.partial_path(out).exists(), "the killed run left no partial store"
    return True


def kill_loop(screen: Path, work: Path, kills: int, sig: int = signal.SIGKILL,
              extra: tuple[str, ...] = (), verbose: bool = False) -> LoopFigures:
    """Kill ``kills`` crops at evenly spread moments of a clean run's cropping phase (from
    its ``.partial`` appearing to its end), resume each, and count finished stores
    identical to the clean run. Every kill lands mid-run: one that comes after the run
    has finished is redone at half the delay (a loaded machine can run faster than the
    clean run did). Every rerun either resumes the committed part or, finding the
    partial file torn, says so and starts over."""
    ref = work / "ref.h5"
    ref.unlink(missing_ok=True)
    proc = start(crop_cmd(screen, ref, *extra))
    wait_for(store.partial_path(ref), proc)
    t0 = time.perf_counter()
    wait_for(ref, proc)  # its final name, not the process's exit: that comes later
    cropping = time.perf_counter() - t0
    assert proc.wait() == 0
    points = [cropping * (i + 0.5) / kills for i in range(kills)]
    figures = LoopFigures(runs=0, kill_points=points, killed_mid_run=0, late_kills=0,
                          resumed=[], torn_restarts=0, identical=0)
    for i, delay in enumerate(points):
        out = work / f"run{i}.h5"
        while not kill_mid_run(crop_cmd(screen, out, *extra), out, delay, sig):
            figures.late_kills += 1
            assert delay > 1e-3, f"no kill landed before the run finished ({i}th point)"
            delay /= 2
        figures.killed_mid_run += 1
        again = run(crop_cmd(screen, out, *extra))
        assert again.returncode == 0, f"rerun after a kill at {delay:.3f} s: {again.stderr}"
        assert "Traceback" not in again.stderr, again.stderr
        resumed = int(store.read_info(out).summary["resumed_fields"])
        torn = "damaged" in again.stderr
        if torn:  # said once, and nothing of the torn file kept
            assert "starting over" in again.stderr and resumed == 0, again.stderr
        else:
            assert "starting over" not in again.stderr, again.stderr
        figures.torn_restarts += int(torn)
        figures.resumed.append(resumed)
        figures.runs += 1
        same = same_store(out, ref)
        figures.identical += int(same)
        if verbose:
            print(f"kill {signal.Signals(sig).name} at {delay:.3f} s: rerun "
                  f"{'started over (torn)' if torn else f'resumed {resumed} fields'}, "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
        out.unlink()
    return figures


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killscreen") / "screen"
    # 160 small fields: the store commits mid-run (every 64 fields), so kills leave
    # committed fields to resume from, and cropping takes a fraction of a second.
    synthesize(root, SynthConfig(batches=1, plates_per_batch=2, sites=4, field_size=128,
                                 cells_per_field=8, seed=3))
    return root


def test_torn_partial_is_detected_and_rebuilt(screen: Path, tmp_path: Path) -> None:
    """A .partial with a torn heap (bytes overwritten as a kill mid-flush leaves them)
    gets a one-line note and a clean restart, not a crash, and --overwrite starts over."""
    ref = tmp_path / "ref.h5"
    assert run(crop_cmd(screen, ref)).returncode == 0
    out = tmp_path / "c.h5"
    partial = store.partial_path(out)
    data = bytearray(ref.read_bytes())
    data[2048:len(data) // 2] = b"\xff" * (len(data) // 2 - 2048)  # heap and index torn
    partial.write_bytes(bytes(data))
    res = run(crop_cmd(screen, out))
    assert res.returncode == 0, res.stderr
    assert "starting over" in res.stderr and "damaged" in res.stderr
    assert "Traceback" not in res.stderr and same_store(out, ref)
    out.unlink()
    partial.write_bytes(bytes(data))
    res = run(crop_cmd(screen, out, "--overwrite"))
    assert res.returncode == 0 and "damaged" not in res.stderr and same_store(out, ref)


def test_killed_crops_resume_to_the_clean_result(screen: Path, tmp_path: Path) -> None:
    """Reduced loop for CI (seconds): three kill -9 and one SIGTERM points of a one-worker
    crop, and a kill -9 of a two-worker one, each mid-run."""
    hard = kill_loop(screen, tmp_path, kills=3)
    soft = kill_loop(screen, tmp_path, kills=1, sig=signal.SIGTERM)
    two = kill_loop(screen, tmp_path, kills=1, extra=("--workers", "2"))
    for figures, kills in ((hard, 3), (soft, 1), (two, 1)):
        assert figures.killed_mid_run == figures.identical == figures.runs == kills


@pytest.mark.killloop
def test_full_kill_loop(tmp_path: Path) -> None:
    """The full loop on a larger screen: many kill -9 and SIGTERM points, and kill -9
    points of a two-worker crop."""
    root = tmp_path / "big"
    synthesize(root, SynthConfig(sites=int(os.environ.get("CELLPROF_KILL_SITES", "4")),
                                 seed=3))
    kills = int(os.environ.get("CELLPROF_KILLS", "30"))
    loops = {
        "kill -9": kill_loop(root, tmp_path, kills=kills, verbose=True),
        "SIGTERM": kill_loop(root, tmp_path, kills=max(kills // 3, 1), sig=signal.SIGTERM,
                             verbose=True),
        "kill -9, 2 workers": kill_loop(root, tmp_path, kills=max(kills // 3, 1),
                                        extra=("--workers", "2"), verbose=True),
    }
    for name, f in loops.items():
        print(f"\n{name}: {f.runs} runs, kill points {f.kill_points[0]:.2f}-"
              f"{f.kill_points[-1]:.2f} s into cropping, {f.killed_mid_run} killed mid-run "
              f"({f.late_kills} came too late and were redone earlier), "
              f"{sum(n > 0 for n in f.resumed)} resumed committed fields, "
              f"{f.torn_restarts} torn partials restarted, {f.identical} identical to a "
              "clean run")
    for f in loops.values():
        assert f.killed_mid_run == f.identical == f.runs


def descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid``, as process id -> parent id (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        below = [p for p, pp in parents.items() if pp in frontier]
        found.update({p: parents[p] for p in below})
        frontier = below
    return found


def pool_workers(tree: dict[int, int]) -> list[int]:
    """The processes of ``tree`` that run tasks: those with no children, less
    multiprocessing's resource tracker (a fork server is the workers' parent)."""
    def helper(pid: int) -> bool:
        try:
            return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
    return [p for p in tree if p not in tree.values() and not helper(p)]


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_die_with_a_killed_crop(method: str, screen: Path, tmp_path: Path) -> None:
    """However its workers were started, a crop killed mid-run leaves no process behind:
    workers, and a fork server or resource tracker, end with it."""
    out = tmp_path / "c.h5"
    proc = start(crop_cmd(screen, out, "--workers", "2", start_method=method))
    partial = store.partial_path(out)
    while proc.poll() is None and size(partial) < 512 << 10:  # laid out, it is ~30 KB:
        time.sleep(0.01)                                      # workers have cropped
    proc.send_signal(signal.SIGSTOP)  # it cannot finish while the test looks
    assert proc.poll() is None, "the crop ended before it committed a field"
    tree = descendants(proc.pid)
    workers = pool_workers(tree)
    assert len(workers) == 2 and all(alive(p) for p in workers), tree
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in tree), "processes outlived their crop"
