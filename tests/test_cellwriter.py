"""The cell writer thread: order, nothing reported done before it is on disk, failures kept per cell."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from PIL import Image

from expressiongrid.run.cellwriter import CellWriter
from expressiongrid.store import CellRecord, Store, is_complete_png


def _cell(key: str, row: int) -> CellRecord:
    return CellRecord(key=key, run_id=None, page=0, row_index=row, col_index=0, row_id=f"r{row}", row_label=f"Row {row}",
                      col_id="c0", col_label="Col 0", character_id="c0", prompt="a face", negative_prompt="",
                      seed=1, steps=2, sampler="Euler a", cfg_scale=7.0, width=8, height=8, spec={"row": row})


def _store_with(tmp_path: Path, keys: list[str]) -> int:
    with Store(tmp_path) as store:
        return store.begin_run({}, [_cell(k, i) for i, k in enumerate(keys)])


def _status(tmp_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    try:
        return dict(conn.execute("SELECT key, status FROM cells"))
    finally:
        conn.close()


def test_cells_are_written_in_order_and_marked_done_after_their_file(tmp_path, monkeypatch):
    keys = [f"k{i}" for i in range(6)]
    run_id = _store_with(tmp_path, keys)
    order = []
    import expressiongrid.output.images as images

    real_save = images.save_png

    def recording_save(path, image, parameters=None, **kw):
        order.append(Path(path).name)
        # the cell is not yet done in the store while its file is being written
        assert _status(tmp_path)[keys[len(order) - 1]] == "pending"
        return real_save(path, image, parameters, **kw)

    monkeypatch.setattr(images, "save_png", recording_save)
    writer = CellWriter(tmp_path, run_id)
    for i, k in enumerate(keys):
        writer.submit(k, Image.new("RGB", (8, 8), (i * 40, 0, 0)), f"parameters {k}", 0.1, tag=i)
    written = writer.close()
    assert [w.tag for w in written] == list(range(6)) and all(w.error is None for w in written)
    assert [name.split(".")[0] for name in order] == keys
    with Store(tmp_path) as store:
        for k in keys:
            record = store.cell(k)
            assert record.status == "done" and record.parameters == f"parameters {k}"
            assert is_complete_png(tmp_path / record.file)


def test_nothing_is_reported_done_while_its_write_is_still_running(tmp_path, monkeypatch):
    run_id = _store_with(tmp_path, ["a", "b"])
    release = threading.Event()
    import expressiongrid.output.images as images

    real_save = images.save_png
    monkeypatch.setattr(images, "save_png", lambda *a, **kw: release.wait(30) and real_save(*a, **kw))
    writer = CellWriter(tmp_path, run_id)
    writer.submit("a", Image.new("RGB", (8, 8)), "p", 0.1, tag="a")
    writer.submit("b", Image.new("RGB", (8, 8)), "p", 0.1, tag="b")
    assert writer.finished() == []  # a crash now loses a and b, which were never reported done
    assert _status(tmp_path) == {"a": "pending", "b": "pending"}
    release.set()
    written = writer.close()
    assert [(w.key, w.error) for w in written] == [("a", None), ("b", None)]
    assert _status(tmp_path) == {"a": "done", "b": "done"}


def test_a_cell_that_cannot_be_saved_fails_alone(tmp_path, monkeypatch):
    run_id = _store_with(tmp_path, ["a", "b", "c"])
    import expressiongrid.output.images as images

    real_save = images.save_png

    def full_disk_for_b(path, image, parameters=None, **kw):
        if Path(path).name.startswith("b"):
            raise OSError(28, "No space left on device")
        return real_save(path, image, parameters, **kw)

    monkeypatch.setattr(images, "save_png", full_disk_for_b)
    writer = CellWriter(tmp_path, run_id)
    for k in "abc":
        writer.submit(k, Image.new("RGB", (8, 8)), "p", 0.1, tag=k)
    written = {w.key: w.error for w in writer.close()}
    assert written["a"] is None and written["c"] is None
    assert "No space left on device" in written["b"]
    assert _status(tmp_path) == {"a": "done", "b": "pending", "c": "done"}


def test_a_run_reports_a_cell_done_only_once_its_file_and_row_are_committed(tmp_path):
    import textwrap

    from expressiongrid.run.runner import run_study
    from expressiongrid.study.study import load_study

    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent("""
        name = "w"
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        seed = 5
        batch_size = 2
        [prompt]
        positive = "a woman, [face: {expression}: 0.2]"
        [rows]
        axis = "expressions"
        items = ["smiling", "sad", "angry"]
        [columns]
        axis = "CFG Scale"
        values = "5, 9"
    """), encoding="utf-8")
    out = tmp_path / "out"
    seen = []

    def progress(done, total, note):
        if not (out / "run.sqlite").is_file():
            return
        conn = sqlite3.connect(out / "run.sqlite")
        try:
            rows = conn.execute("SELECT status, file FROM cells WHERE status != 'pending'").fetchall()
        finally:
            conn.close()
        assert len(rows) >= done  # everything reported done is already in the store
        assert all(is_complete_png(out / f) for status, f in rows if status == "done")
        seen.append(done)

    summary = run_study(load_study(study), out, progress)
    assert summary.made == 6 and summary.failed == 0
    assert seen[-1] == 6 and seen == sorted(seen)
