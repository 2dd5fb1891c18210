"""Every table of the package's databases, as numbered migrations listed explicitly per component.

A run folder's ``run.sqlite`` holds the run store (``core``), the accelerate shard bookkeeping
(``distributed``), the measurements (``analysis``) and the human judgements (``judge``); ``Store`` applies
all of ``RUN_MIGRATIONS`` whenever it opens a folder, so every table exists for every reader. The queue's
``queue.sqlite`` has ``QUEUE_MIGRATIONS``. Append only: a released migration never changes, a new schema
is a new function at the end of its list.
"""

from __future__ import annotations

import sqlite3

from expressiongrid.store.db import Migration

# -- core: runs and cells --------------------------------------------------------------------------


def _m001_core(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running',   -- running | done | failed | interrupted
            study_path TEXT,
            study_json TEXT NOT NULL,                 -- the resolved study (study_info())
            summary_json TEXT,                        -- RunSummary as JSON once finished
            argv TEXT
        )"""
    )
    conn.execute(
        """CREATE TABLE cells (
            key TEXT PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id),       -- latest run whose plan holds this cell
            made_in_run INTEGER,                      -- run that produced the file (NULL until done)
            page INTEGER NOT NULL DEFAULT 0,
            page_label TEXT NOT NULL DEFAULT '',
            row_index INTEGER NOT NULL,
            col_index INTEGER NOT NULL,
            row_id TEXT NOT NULL,
            row_label TEXT NOT NULL,
            col_id TEXT NOT NULL,
            col_label TEXT NOT NULL,
            character_id TEXT,
            prompt TEXT NOT NULL,
            negative_prompt TEXT NOT NULL,
            seed INTEGER NOT NULL,
            steps INTEGER NOT NULL,
            sampler TEXT NOT NULL,
            cfg_scale REAL NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
            error TEXT,
            file TEXT,                                -- relative to the run folder
            parameters TEXT,                          -- A1111 infotext written into the PNG
            seconds REAL,
            spec_json TEXT NOT NULL,                  -- everything hashed into the key
            created_at REAL NOT NULL,
            finished_at REAL
        )"""
    )
    conn.execute("CREATE INDEX cells_status ON cells(status)")
    conn.execute("CREATE INDEX cells_run ON cells(run_id)")


def _m002_cell_metadata(conn: sqlite3.Connection) -> None:
    # The cell's metadata as data (``output.metadata.CellMetadata``); NULL for cells made before it existed,
    # whose ``parameters`` text is read instead.
    conn.execute("ALTER TABLE cells ADD COLUMN metadata_json TEXT")


# -- distributed: which accelerate processes of a launch have finished -----------------------------


def _m001_shards(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE shard_finishes (
            launch_id TEXT NOT NULL,
            process_index INTEGER NOT NULL,
            process_count INTEGER NOT NULL,
            finished_at REAL NOT NULL,
            cells_done INTEGER,
            cells_failed INTEGER,
            PRIMARY KEY (launch_id, process_index)
        )"""
    )


# -- analysis: measurements and scores (expressiongrid.analysis.runstore reads and writes them) ------


def _m001_analysis(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE analysis_cells (
            key TEXT PRIMARY KEY REFERENCES cells(key),
            analyzer_version INTEGER NOT NULL,
            analysed_at REAL NOT NULL,
            file TEXT,                    -- the image measured (a redone cell gets a new row)
            face_found INTEGER NOT NULL,  -- 0: no face detected (a finding, not an error)
            faces INTEGER NOT NULL DEFAULT 0,
            face_score REAL,
            box_json TEXT,
            landmarks_json TEXT,          -- 68 (x, y) points, dlib/iBUG order
            embedding_json TEXT,          -- 128-d dlib identity descriptor
            features_json TEXT,           -- ExpressionFeatures
            entropy REAL,
            noise REAL,
            clip_score REAL,
            aesthetic REAL,
            error TEXT                    -- the image could not be read
        )"""
    )
    conn.execute(
        """CREATE TABLE analysis_cell_scores (
            key TEXT PRIMARY KEY REFERENCES cells(key),
            fidelity REAL,
            reference_fidelity REAL,
            fidelity_vs_reference REAL,
            identity_to_neutral REAL,
            identity_to_others REAL,
            identity_flag TEXT,
            aus_json TEXT,
            note TEXT
        )"""
    )
    conn.execute(
        """CREATE TABLE analysis_character_scores (
            col_id TEXT PRIMARY KEY,
            is_reference INTEGER NOT NULL,
            reach REAL, distinctness REAL, flexibility REAL,
            identity_stability REAL, mean_identity_distance REAL,
            faces_found INTEGER, cells INTEGER, flagged INTEGER
        )"""
    )
    conn.execute(
        """CREATE TABLE analysis_expression_scores (
            row_id TEXT PRIMARY KEY,
            targets_json TEXT, unmeasured_json TEXT,
            base_fidelity REAL, character_fidelity REAL, difficulty REAL, loss REAL, verdict TEXT
        )"""
    )
    conn.execute(
        "CREATE TABLE analysis_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )


def _m002_content_pose_counts(conn: sqlite3.Connection) -> None:
    # Measured images are recognised by their content, so a replaced image is measured again.
    conn.execute("ALTER TABLE analysis_cells ADD COLUMN content_sha256 TEXT")
    conn.execute("ALTER TABLE analysis_cells ADD COLUMN emotions_json TEXT")  # classifier probabilities
    conn.execute("ALTER TABLE analysis_cell_scores ADD COLUMN pose_flag INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE analysis_character_scores ADD COLUMN no_face INTEGER")
    conn.execute("ALTER TABLE analysis_character_scores ADD COLUMN pose_flagged INTEGER")
    conn.execute("ALTER TABLE analysis_expression_scores ADD COLUMN no_face INTEGER")


def _m003_emotion_scores(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE analysis_cell_scores ADD COLUMN emotion TEXT")
    conn.execute("ALTER TABLE analysis_cell_scores ADD COLUMN emotion_score REAL")


# -- judge: pairwise answers (expressiongrid.judge.db) ---------------------------------------------


def _m001_judgements(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE judgements (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            question_id TEXT NOT NULL,          -- e.g. expr:<row_id>:p<page> or ident:<col_id>:p<page>
            left_key TEXT NOT NULL,             -- cell shown on the left
            right_key TEXT NOT NULL,            -- cell shown on the right
            answer TEXT NOT NULL CHECK (answer IN ('left', 'right', 'equal', 'skip')),
            judge TEXT NOT NULL,
            created_at REAL NOT NULL,           -- unix time the answer was stored
            seconds REAL                        -- time from showing the pair to the answer, if known
        )"""
    )
    conn.execute("CREATE INDEX judgements_judge ON judgements(judge, question_id)")


# -- the overnight queue's own database --------------------------------------------------------------


def _m001_queue(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            study TEXT NOT NULL,
            out_dir TEXT,
            args TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued','running','done','failed','incomplete')),
            outcome TEXT,
            added_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER,
            pid INTEGER,
            host TEXT
        )"""
    )


RUN_MIGRATIONS: dict[str, list[Migration]] = {
    "core": [_m001_core, _m002_cell_metadata],
    "distributed": [_m001_shards],
    "analysis": [_m001_analysis, _m002_content_pose_counts, _m003_emotion_scores],
    "judge": [_m001_judgements],
}
QUEUE_MIGRATIONS: dict[str, list[Migration]] = {"queue": [_m001_queue]}
