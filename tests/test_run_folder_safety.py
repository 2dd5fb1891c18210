"""A run folder survives what happens to it between runs: a done cell damaged inside is re-made, stray
temp files go, a second run at the same time is refused, a failing grid never leaves the run "running",
and metadata too long for JPEG EXIF does not fail the upload copy."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from expressiongrid.cli import main
from test_bad_inputs import BASE, to_toml

ENV = {"EXPRESSIONGRID_NO_PROGRESS": "1"}


def run(study: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["run", str(study), "--out", str(out), *extra], env=ENV)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("made")
    study = folder / "s.toml"
    study.write_text(to_toml(BASE), encoding="utf-8")
    # Batch size 1: a cell re-made alone must match one made alone (see docs/engine.md on batch composition).
    result = run(study, folder / "out", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    return study, folder / "out"


def cell_files(out: Path) -> list[Path]:
    with sqlite3.connect(out / "run.sqlite") as db:
        files = [out / row[0] for row in db.execute("SELECT file FROM cells WHERE status = 'done' ORDER BY key")]
    db.close()
    return files


def test_a_done_cell_damaged_inside_is_made_again_and_stray_temp_files_go(made, tmp_path):
    study, original = made
    out = tmp_path / "out"
    shutil.copytree(original, out)
    victim = cell_files(out)[1]
    pixels = np.asarray(Image.open(victim).convert("RGB"))
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2  # inside the image data: the PNG signature and its IEND end marker stay intact
    data[middle : middle + 16] = bytes(16)
    victim.write_bytes(bytes(data))
    (out / "grids" / ".bad.png.x1y2.tmp").write_bytes(b"half a grid")  # a kill while a grid was written

    result = run(study, out, "--batch-size", "1")

    assert result.exit_code == 0, result.output
    assert "made 1, skipped 3" in result.output
    assert "missing or broken files 1" in result.output and "temp files removed 1" in result.output
    assert not list((out / "grids").glob("*.tmp"))
    assert np.array_equal(np.asarray(Image.open(victim).convert("RGB")), pixels)  # the same pixels again


def test_a_second_run_on_a_folder_in_use_is_refused(made, tmp_path):
    from filelock import FileLock

    study, original = made
    out = tmp_path / "out"
    shutil.copytree(original, out)
    with FileLock(str(out / "run.lock"), timeout=0):  # what a run in another process holds
        result = run(study, out)
    assert result.exit_code == 2
    assert "another run is writing into" in result.stderr and "Traceback" not in result.stderr
    assert run(study, out).exit_code == 0  # once it is gone, the folder is free again


def test_runs_show_tells_a_live_run_from_a_killed_one_without_touching_its_lock(made, tmp_path):
    import json
    import socket

    from expressiongrid.run.launch import OWNER_NAME, ProcessInfo, run_folder_lock, run_folder_owner
    from expressiongrid.store import Store

    _, original = made
    out = tmp_path / "out"
    shutil.copytree(original, out)
    with Store.open_existing(out) as store:
        store.connection.execute("UPDATE runs SET status = 'running' WHERE id = (SELECT MAX(id) FROM runs)")

    def last_status() -> str:
        shown = CliRunner().invoke(main, ["runs", "show", str(out), "--json"])
        return json.loads(shown.output)["runs"][-1]["status"]

    with run_folder_lock(out, ProcessInfo()):  # this process is the run
        assert run_folder_owner(out)["pid"] == os.getpid() and last_status() == "running"
    assert not (out / OWNER_NAME).exists()  # a run that ends removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / OWNER_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert last_status() == "interrupted"  # what a SIGKILL leaves behind
    # A kill long ago, and the system has since given the run's pid to another process (this test's, here):
    # the start time recorded beside the pid tells them apart.
    import psutil

    at = psutil.Process().create_time()
    after_boot = at - psutil.boot_time()
    long_ago = {"at": at - 3600, "after_boot": after_boot - 3600}
    here = socket.gethostname()
    (out / OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": here, "started": long_ago}))
    assert last_status() == "interrupted"
    # The clock was set since the run started: the time since boot still names the same process.
    moved = {"at": at + 3600, "after_boot": after_boot}
    (out / OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": here, "started": moved}))
    assert last_status() == "running"
    (out / OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": here, "started": long_ago}))
    listed = json.loads(CliRunner().invoke(main, ["runs", "list", str(tmp_path), "--json"]).output)
    assert [r["status"] for r in listed] == ["interrupted"]
    # A lock file from a version that recorded no start time: the pid alone decides, as it did.
    (out / OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": here}))
    assert last_status() == "running"
    # On another machine (a shared disk) the process cannot be looked at: said so, not claimed running.
    (out / OWNER_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "another-machine",
                                              "started": long_ago}))
    shown = CliRunner().invoke(main, ["runs", "show", str(out), "--json"])
    assert json.loads(shown.output)["runs"][-1]["running_on"] == {"host": "another-machine",
                                                                  "pid": int(dead.stdout), "checked": False}
    for command in (["runs", "show", str(out)], ["runs", "list", str(tmp_path)]):
        text = CliRunner().invoke(main, command).output
        assert "running on host another-machine? (cannot check from this machine)" in text, text


def test_a_grid_that_cannot_be_written_marks_the_run_failed_not_running(made, tmp_path, monkeypatch):
    import errno

    import expressiongrid.run.runner as runner

    study, original = made
    out = tmp_path / "out"
    shutil.copytree(original, out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "grids" / "bad.png"))

    monkeypatch.setattr(runner, "compose_grids", full)
    result = run(study, out)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the disk is full") and "run the same command again" in result.stderr
    with sqlite3.connect(out / "run.sqlite") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM runs ORDER BY id")]
    db.close()
    assert statuses[-1] == "failed" and "running" not in statuses


def test_parameters_too_long_for_exif_leave_the_upload_copy_without_them(tmp_path, caplog):
    from expressiongrid.output.images import read_parameters, save_png, save_upload_copy

    image = Image.new("RGB", (64, 64), (10, 20, 30))
    parameters = "a photo, " * 4_000 + "\nSteps: 20, Seed: 1"  # ~36,000 characters: 72 KB as UTF-16
    with caplog.at_level(logging.WARNING, logger="expressiongrid"):
        copy = save_upload_copy(tmp_path / "grid.upload.jpg", image, parameters)
    assert copy.is_file() and read_parameters(copy) is None
    assert "too long for JPEG/WebP metadata" in caplog.text
    png = save_png(tmp_path / "grid.png", image, parameters)
    assert read_parameters(png) == parameters  # the PNG keeps all of it


def _older_store(out: Path) -> None:
    """Turn the folder's run.sqlite into what a version from before cell metadata and judging left."""
    db = sqlite3.connect(out / "run.sqlite")
    with db:
        db.execute("ALTER TABLE cells DROP COLUMN metadata_json")
        db.execute("UPDATE schema_versions SET version = 1 WHERE component = 'core'")
        db.execute("DROP TABLE judgements")
        db.execute("DELETE FROM schema_versions WHERE component = 'judge'")
    db.close()


def _folder_state(out: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_a_dry_run_on_a_folder_an_older_version_made_writes_nothing_there(made, tmp_path):
    study, original = made
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _older_store(out)
    before = _folder_state(out)
    dry = run(study, out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert _folder_state(out) == before  # every file's bytes and mtime, and no -wal / -shm files left beside
    assert "4 images, 4 already done" in dry.output  # planned from what the older store holds
    assert "the run will upgrade it, this dry run left it as it is" in dry.output
    planned = json.loads(run(study, out, "--dry-run", "--json").output)
    assert planned["already_done"] == 4 and planned["store_upgrade"] == ["core", "judge"]
    assert _folder_state(out) == before

    # While another process has the store open with writes not yet folded into the file (its -wal), a dry
    # run sees them, and changes neither the file nor that log.
    writer = sqlite3.connect(out / "run.sqlite", isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE cells SET status = 'pending' WHERE key = (SELECT MIN(key) FROM cells)")
        logged = {name: (out / name).read_bytes() for name in ("run.sqlite", "run.sqlite-wal")}
        assert len(logged["run.sqlite-wal"]) > 0
        assert "4 images, 3 already done" in run(study, out, "--dry-run").output
        assert {name: (out / name).read_bytes() for name in logged} == logged
    finally:
        writer.close()

    made_now = run(study, out)  # the real run upgrades the store and remakes the cell set back to pending
    assert made_now.exit_code == 0, made_now.output
    with sqlite3.connect(out / "run.sqlite") as db:
        versions = dict(db.execute("SELECT component, version FROM schema_versions").fetchall())
    db.close()
    from expressiongrid.store.schema import RUN_MIGRATIONS

    assert versions == {c: len(m) for c, m in RUN_MIGRATIONS.items()}
