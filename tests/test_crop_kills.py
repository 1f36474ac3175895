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

from cellprof.formats import store
from cellprof.example.synth import SynthConfig, synthesize


@dataclass
class LoopFigures:
    runs: int
    kill_points: list[float]
    killed_mid_run: int
    torn_restarts: int
    identical: int


def crop_cmd(screen: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cellprof", "crop", str(screen / "Image.csv"), "--objects",
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


def kill_loop(screen: Path, work: Path, kills: int, sig: int = signal.SIGKILL,
              verbose: bool = False) -> LoopFigures:
    """Kill ``kills`` crops at evenly spread moments of a clean run's cropping phase (from
    its ``.partial`` appearing to its end), resume each, and count finished stores
    identical to the clean run."""
    ref = work / "ref.h5"
    ref.unlink(missing_ok=True)
    proc = start(crop_cmd(screen, ref))
    wait_for(store.partial_path(ref), proc)
    t0 = time.perf_counter()
    assert proc.wait() == 0
    cropping = time.perf_counter() - t0
    points = [cropping * (i + 0.5) / kills for i in range(kills)]
    figures = LoopFigures(runs=0, kill_points=points, killed_mid_run=0, torn_restarts=0,
                          identical=0)
    for i, delay in enumerate(points):
        out = work / f"run{i}.h5"
        proc = start(crop_cmd(screen, out))
        wait_for(store.partial_path(out), proc)
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait()
        finished = out.exists()
        if not finished:
            figures.killed_mid_run += 1
            again = run(crop_cmd(screen, out))
            assert again.returncode == 0, f"rerun after a kill at {delay:.2f} s: {again.stderr}"
            figures.torn_restarts += int("damaged" in again.stderr)
        figures.runs += 1
        same = same_store(out, ref)
        figures.identical += int(same)
        if verbose:
            print(f"kill {signal.Signals(sig).name} at {delay:.2f} s: "
                  f"{'killed mid-run' if not finished else 'had finished'}, "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
        out.unlink()
    return figures


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killscreen") / "screen"
    synthesize(root, SynthConfig(batches=1, plates_per_batch=2, sites=1, seed=3))
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
    """Reduced loop for CI (under a minute): three kill -9 and one SIGTERM points."""
    hard = kill_loop(screen, tmp_path, kills=3)
    soft = kill_loop(screen, tmp_path, kills=1, sig=signal.SIGTERM)
    assert hard.identical == hard.runs == 3 and soft.identical == soft.runs == 1
    assert hard.killed_mid_run + soft.killed_mid_run >= 1  # a kill landed mid-run (timing varies with load)


@pytest.mark.killloop
def test_full_kill_loop(tmp_path: Path) -> None:
    """The full loop on a larger screen: many kill -9 and SIGTERM points."""
    root = tmp_path / "big"
    synthesize(root, SynthConfig(sites=int(os.environ.get("CELLPROF_KILL_SITES", "4")),
                                 seed=3))
    kills = int(os.environ.get("CELLPROF_KILLS", "30"))
    hard = kill_loop(root, tmp_path, kills=kills, verbose=True)
    soft = kill_loop(root, tmp_path, kills=max(kills // 3, 1), sig=signal.SIGTERM,
                     verbose=True)
    for name, f in (("kill -9", hard), ("SIGTERM", soft)):
        print(f"\n{name}: {f.runs} runs, kill points {f.kill_points[0]:.2f}-"
              f"{f.kill_points[-1]:.2f} s into cropping, {f.killed_mid_run} killed mid-run, "
              f"{f.torn_restarts} torn partials restarted, {f.identical} identical to a "
              "clean run")
    assert hard.identical == hard.runs and soft.identical == soft.runs


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_workers_die_with_a_killed_crop(screen: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    proc = start(crop_cmd(screen, out, "--workers", "2"))
    wait_for(store.partial_path(out), proc)
    deadline = time.time() + 30
    while len(workers := children(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2, "the crop never started its workers"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "worker processes outlived their parent"
