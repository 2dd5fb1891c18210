"""The ``analysis_*`` tables in a run's SQLite database.

``analysis_cells`` holds what was measured per cell (one row per cell key with the SHA-256 of the image
measured, so a re-run skips an unchanged image and measures a replaced one);
``analysis_cell_scores``, ``analysis_character_scores`` and ``analysis_expression_scores`` hold the scores
derived from them, replaced as a whole each time ``analyze`` runs (they depend on every cell).
"""

from __future__ import annotations

import json
import sqlite3
import time

from expressiongrid.store import register_migrations

# Bump when a change to the measurements makes old rows wrong; rows of older versions are measured again.
ANALYZER_VERSION = 3  # 2: pose-corrected features, lids split, data-derived scales; 3: CLIP as cosine 0-1


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


MIGRATIONS = [_m001_analysis, _m002_content_pose_counts, _m003_emotion_scores]
register_migrations("analysis", MIGRATIONS)


def analysed(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """Rows of ``analysis_cells`` by key (current analyzer version only)."""
    rows = conn.execute("SELECT * FROM analysis_cells WHERE analyzer_version = ?", (ANALYZER_VERSION,))
    return {r["key"]: r for r in rows.fetchall()}


def save_cell(conn: sqlite3.Connection, key: str, file: str | None, face, features, entropy, noise,
              clip_score=None, aesthetic=None, error: str | None = None, content_sha256: str | None = None,
              emotions: dict | None = None) -> None:
    """Write (or replace) one cell's measurements in its own transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            """INSERT OR REPLACE INTO analysis_cells(key, analyzer_version, analysed_at, file, face_found, faces,
                   face_score, box_json, landmarks_json, embedding_json, features_json, entropy, noise,
                   clip_score, aesthetic, error, content_sha256, emotions_json)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (key, ANALYZER_VERSION, time.time(), file, int(bool(face and face.found)),
             face.faces if face else 0, face.score if face else None,
             json.dumps(face.box) if face and face.box else None,
             json.dumps(face.landmarks) if face and face.found else None,
             json.dumps(face.embedding) if face and face.embedding else None,
             json.dumps(features.as_dict()) if features else None,
             entropy, noise, clip_score, aesthetic, error, content_sha256,
             json.dumps(emotions) if emotions else None),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def update_file(conn: sqlite3.Connection, key: str, file: str) -> None:
    """The same image content now lives in another file: keep its measurements, record the new name."""
    conn.execute("UPDATE analysis_cells SET file = ? WHERE key = ?", (file, key))


def save_clip(conn: sqlite3.Connection, key: str, clip_score: float, aesthetic: float | None) -> None:
    conn.execute("UPDATE analysis_cells SET clip_score = ?, aesthetic = COALESCE(?, aesthetic) WHERE key = ?",
                 (clip_score, aesthetic, key))


def save_scores(conn: sqlite3.Connection, scores, meta: dict) -> None:
    """Replace every score table with ``scores`` (an ``analysis.scores.Scores``) in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("analysis_cell_scores", "analysis_character_scores", "analysis_expression_scores",
                      "analysis_meta"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        conn.executemany(
            "INSERT INTO analysis_cell_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(c.key, c.fidelity, c.reference_fidelity, c.fidelity_vs_reference, c.identity_to_neutral,
              c.identity_to_others, c.identity_flag, json.dumps(c.aus) if c.aus else None, c.note, int(c.pose_flag),
              c.emotion, c.emotion_score)
             for c in scores.cells.values()],
        )
        conn.executemany(
            "INSERT INTO analysis_character_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.col_id, int(s.is_reference), s.reach, s.distinctness, s.flexibility, s.identity_stability,
              s.mean_identity_distance, s.faces_found, s.cells, s.flagged, s.no_face, s.pose_flagged)
             for s in scores.characters.values()],
        )
        conn.executemany(
            "INSERT INTO analysis_expression_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.row_id, json.dumps(e.targets), json.dumps(e.unmeasured), e.base_fidelity, e.character_fidelity,
              e.difficulty, e.loss, e.verdict, e.no_face) for e in scores.expressions.values()],
        )
        conn.executemany("INSERT INTO analysis_meta VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def load_meta(conn: sqlite3.Connection) -> dict:
    return {r["name"]: json.loads(r["value"]) for r in conn.execute("SELECT name, value FROM analysis_meta")}
