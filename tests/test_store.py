"""The run store: SQLite schema, migrations, cell lifecycle, reconciliation with the files on disk."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from expressiongrid.errors import StoreError
from expressiongrid.store.db import connect, migrate, schema_version, transaction
from expressiongrid.store.schema import RUN_MIGRATIONS
from expressiongrid.store import CellRecord, Store, cell_file_for, find_runs, is_complete_png


def _cell(key: str, row: int = 0, col: int = 0, **kw) -> CellRecord:
    base = dict(
        key=key, run_id=None, page=0, row_index=row, col_index=col, row_id=f"r{row}", row_label=f"Row {row}",
        col_id=f"c{col}", col_label=f"Col {col}", character_id=f"c{col}", prompt="a face", negative_prompt="blurry",
        seed=42, steps=4, sampler="Euler a", cfg_scale=7.0, width=64, height=64, spec={"seed": 42, "row": row},
    )
    base.update(kw)
    return CellRecord(**base)


def _write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_new_store_uses_wal_and_core_schema(tmp_path):
    st = Store(tmp_path / "run")
    assert (tmp_path / "run" / "run.sqlite").exists()
    assert st.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.schema_version("core") == len(RUN_MIGRATIONS["core"])
    tables = {r[0] for r in st.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "cells", "schema_versions"} <= tables


def test_open_existing_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(StoreError, match="no run in"):
        Store.open_existing(tmp_path)
    Store(tmp_path).close()
    assert Store.open_existing(tmp_path).run_dir == tmp_path


def test_migrations_run_once_in_order(tmp_path):
    calls = []

    def m1(conn):
        calls.append(1)
        conn.execute("CREATE TABLE judge_votes (id INTEGER PRIMARY KEY, winner TEXT)")

    def m2(conn):
        calls.append(2)
        conn.execute("ALTER TABLE judge_votes ADD COLUMN loser TEXT")

    conn = connect(tmp_path / "x.sqlite")
    migrate(conn, "votes", [m1], where="x")
    migrate(conn, "votes", [m1, m2], where="x")
    migrate(conn, "votes", [m1, m2], where="x")  # a third run applies nothing
    assert calls == [1, 2]
    assert schema_version(conn, "votes") == 2
    assert [r[1] for r in conn.execute("PRAGMA table_info(judge_votes)")] == ["id", "winner", "loser"]


def test_failing_migration_rolls_back_and_reports(tmp_path):
    def bad(conn):
        conn.execute("CREATE TABLE half (x)")
        conn.execute("THIS IS NOT SQL")

    conn = connect(tmp_path / "x.sqlite")
    with pytest.raises(StoreError, match="migration 1 of 'broken' failed on x"):
        migrate(conn, "broken", [bad], where="x")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables  # the whole migration was one transaction
    assert schema_version(conn, "broken") == 0


def test_a_database_versioned_another_way_starts_from_its_old_version(tmp_path):
    made = []
    conn = connect(tmp_path / "q.sqlite")
    migrate(conn, "queue", [lambda c: made.append(1), lambda c: made.append(2)], where="q", start=1)
    assert made == [2] and schema_version(conn, "queue") == 2


def test_every_table_of_a_run_folder_exists_once_a_store_opens(tmp_path):
    st = Store(tmp_path)
    tables = {r[0] for r in st.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"cells", "runs", "shard_finishes", "analysis_cells", "judgements"} <= tables
    assert {c: st.schema_version(c) for c in RUN_MIGRATIONS} == {c: len(m) for c, m in RUN_MIGRATIONS.items()}


def test_transaction_rolls_back_and_names_database_errors(tmp_path):
    conn = connect(tmp_path / "t.sqlite")
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    with pytest.raises(RuntimeError):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("stop")
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(StoreError, match="run database error"):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")


def test_cell_lifecycle_and_rerun_keeps_done_cells(tmp_path):
    st = Store(tmp_path)
    run1 = st.begin_run({"rows": ["a", "b"]}, [_cell("k1", 0), _cell("k2", 1)])
    assert [c.status for c in st.cells()] == ["pending", "pending"]
    _write_png(tmp_path / cell_file_for("k1"))
    st.mark_done("k1", file=cell_file_for("k1"), parameters="a face\nSteps: 4", seconds=0.5, run_id=run1)
    st.mark_failed("k2", "NaN image", run_id=run1)
    st.finish_run(run1, "failed", {"made": 1, "failed": 1})

    # second run of a bigger study: the done cell stays done, its row moved down, a new row is pending
    run2 = st.begin_run({"rows": ["new", "a", "b"]}, [_cell("k0", 0), _cell("k1", 1), _cell("k2", 2)])
    by_key = {c.key: c for c in st.cells()}
    assert by_key["k1"].status == "done" and by_key["k1"].row_index == 1 and by_key["k1"].made_in_run == run1
    assert by_key["k1"].run_id == run2
    assert by_key["k0"].status == "pending"
    assert by_key["k2"].status == "failed" and by_key["k2"].error == "NaN image"
    assert st.study_info() == {"rows": ["new", "a", "b"]}
    assert [r.id for r in st.runs()] == [run1, run2]
    assert st.runs()[0].summary == {"made": 1, "failed": 1}
    assert st.counts() == {"pending": 1, "done": 1, "failed": 1}
    assert st.cell("k1").spec == {"seed": 42, "row": 0}


def test_cells_defaults_to_latest_plan(tmp_path):
    st = Store(tmp_path)
    st.begin_run({}, [_cell("old", 0)])
    st.begin_run({}, [_cell("new", 0)])
    assert [c.key for c in st.cells()] == ["new"]
    assert {c.key for c in st.cells(all_runs=True)} == {"old", "new"}
    with pytest.raises(StoreError, match="unknown cell status"):
        st.cells("finished")


def test_reconcile_redoes_missing_and_truncated_files(tmp_path):
    st = Store(tmp_path)
    run = st.begin_run({}, [_cell("good"), _cell("gone", 1), _cell("cut", 2), _cell("bad", 3)])
    for key in ("good", "gone", "cut"):
        _write_png(tmp_path / cell_file_for(key))
        st.mark_done(key, file=cell_file_for(key), parameters="p", seconds=0.1, run_id=run)
    st.mark_failed("bad", "boom", run_id=run)
    (tmp_path / cell_file_for("gone")).unlink()
    cut = tmp_path / cell_file_for("cut")
    cut.write_bytes(cut.read_bytes()[:-20])  # a crash half-way through a write
    tmp = tmp_path / "cells" / "go" / "good.png.tmp123"
    tmp.write_bytes(b"partial")

    fixed = st.reconcile()
    assert fixed == {"missing_or_broken_files": 2, "retried_failed": 1, "temp_files_removed": 1}
    status = {c.key: c.status for c in st.cells()}
    assert status == {"good": "done", "gone": "pending", "cut": "pending", "bad": "pending"}
    assert not tmp.exists()


def test_is_complete_png(tmp_path):
    p = tmp_path / "x.png"
    _write_png(p)
    assert is_complete_png(p)
    p.write_bytes(p.read_bytes()[:-1])
    assert not is_complete_png(p)
    assert not is_complete_png(tmp_path / "missing.png")


def test_concurrent_writers_share_a_store(tmp_path):
    st = Store(tmp_path)
    run = st.begin_run({}, [_cell(f"k{i}", i) for i in range(40)])
    errors = []

    def worker(start):
        try:
            other = Store(tmp_path)  # a second process/shard opening the same folder
            for i in range(start, 40, 2):
                other.mark_done(f"k{i}", file=f"f{i}", parameters="p", seconds=0.0, run_id=run)
            other.close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert st.counts()["done"] == 40


def test_find_runs(tmp_path):
    Store(tmp_path / "a").close()
    Store(tmp_path / "b" / "nested").close()
    (tmp_path / "c").mkdir()
    assert find_runs(tmp_path) == [tmp_path / "a", tmp_path / "b" / "nested"]
