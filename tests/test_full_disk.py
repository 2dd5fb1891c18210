"""A disk that fills up during a run, and a read-only one: a one-line error, nothing made is lost, and
after space is freed the same command resumes to the same pixels.

Needs a small file system of its own: a tmpfs mounted for the test (root on Linux). Where it cannot be
made the tests are skipped, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_resume import ROOT, cells, cli_env, demo_characters, done_images, run_cli, write_study

pytestmark = pytest.mark.slow  # three real runs in fresh interpreters


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(made.stderr or made.stdout).strip()[:120]}); "
                    "the full-disk test needs root on Linux")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` until only about `leave` bytes are free."""
    import os

    filler = folder / "filler.bin"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


@pytest.fixture(scope="module")
def study_and_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fulldisk")
    study = write_study(folder, "full", demo_characters(folder), rows=("neutral", "smiling", "angry"), steps=2,
                        batch_size=1)
    reference = run_cli("run", str(study), "--out", str(folder / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    return study, folder / "reference"


def test_a_full_disk_is_one_clear_error_and_the_run_resumes_after_space_is_freed(small_disk, study_and_reference):
    study, reference = study_and_reference
    out = small_disk / "out"
    # Room for the store, the log and a few cells, not for all nine cells and the grids.
    per_cell = max(p.stat().st_size for p in (reference / "cells").rglob("*.png"))
    filler = _fill(small_disk, leave=300_000 + 3 * per_cell)

    first = run_cli("run", str(study), "--out", str(out))
    assert first.returncode == 1, first.stderr[-2000:]
    assert "Traceback" not in first.stderr and "Logging error" not in first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "disk is full" in errors[0] and "run the same command again" in errors[0]
    kept = {c["key"] for c in cells(out) if c["status"] == "done"} if (out / "run.sqlite").exists() else set()

    filler.unlink()
    second = run_cli("run", str(study), "--out", str(out))
    assert second.returncode == 0, second.stderr[-2000:]
    rows = cells(out)
    assert {c["status"] for c in rows} == {"done"} and len(rows) == 9
    assert kept <= {c["key"] for c in rows}
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())
    assert on_disk == sorted(c["file"] for c in rows)  # no half-written file left behind
    expected, got = done_images(reference), done_images(out)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_a_read_only_output_folder_is_refused_before_anything_loads(small_disk, study_and_reference):
    study, reference = study_and_reference
    out = small_disk / "out"
    shutil.copytree(reference, out)
    before = sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()[:120]}")
    for args in (["--dry-run"], []):
        result = subprocess.run([sys.executable, "-m", "expressiongrid", "run", str(study), "--out", str(out), *args],
                                capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
        assert "read-only file system" in result.stderr and "Traceback" not in result.stderr
    after = sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    assert after == before


def test_a_queue_on_a_read_only_disk_is_said_to_be_read_only_not_unreadable(small_disk):
    from expressiongrid.run.queue import StudyQueue

    home = small_disk / "queue"
    StudyQueue(home)  # a queue made there earlier (a shared disk, a backup mounted read-only now)
    before = (home / "queue.sqlite").read_bytes()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()[:120]}")
    result = subprocess.run([sys.executable, "-m", "expressiongrid", "queue", "list"], capture_output=True,
                            text=True, env={**cli_env(), "EXPRESSIONGRID_HOME": str(home)}, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: the queue folder {home} cannot be written (it is on a read-only file "
                                     "system); make it writable, or set EXPRESSIONGRID_HOME to a writable folder")
    assert (home / "queue.sqlite").read_bytes() == before  # not "unreadable: move it away"


def test_a_run_on_a_read_only_disk_can_be_inspected_and_reported_elsewhere(small_disk, study_and_reference, tmp_path):
    """A run folder on a read-only disk (a backup, another user's share): `runs show` / `runs list` read it,
    `report --out` writes elsewhere, and what would write into it says so in one line. Before, every one of
    them said the database could not be opened and to move it away."""
    _, reference = study_and_reference
    out = small_disk / "out"
    shutil.copytree(reference, out)
    before = sorted((p.relative_to(out).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in out.rglob("*") if p.is_file())
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()[:120]}")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "expressiongrid", *args], capture_output=True, text=True,
                              env=cli_env(), cwd=ROOT, timeout=300)

    show = cli("runs", "show", str(out))
    assert show.returncode == 0, show.stderr
    assert "cells: 9 (9 done, 0 failed, 0 pending)" in show.stdout
    listed = cli("runs", "list", str(small_disk))
    assert listed.returncode == 0 and str(out) in listed.stdout, listed.stderr
    report = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr
    for args, hint in ((["view", str(out)], "copy the folder"), (["report", str(out)], "give --out")):
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "read-only file system" in result.stderr and hint in result.stderr
    after = sorted((p.relative_to(out).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in out.rglob("*") if p.is_file())
    assert after == before
