"""The ``analysis_*`` tables in a run's SQLite database.

``analysis_cells`` holds what was measured per cell (one row per cell key with the SHA-256 of the image
measured, so a re-run skips an unchanged image and measures a replaced one);
``analysis_cell_scores``, ``analysis_character_scores`` and ``analysis_expression_scores`` hold the scores
derived from them, replaced as a whole each time ``analyze`` runs (they depend on every cell). The tables
themselves are created by ``store.schema`` (component "analysis"), like every table of a run folder.
"""

from __future__ import annotations

import json
import sqlite3
import time

from expressiongrid.store.db import transaction

# Bump when a change to the measurements makes old rows wrong; rows of older versions are measured again.
ANALYZER_VERSION = 3  # 2: pose-corrected features, lids split, data-derived scales; 3: CLIP as cosine 0-1


def analysed(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """Rows of ``analysis_cells`` by key (current analyzer version only)."""
    rows = conn.execute("SELECT * FROM analysis_cells WHERE analyzer_version = ?", (ANALYZER_VERSION,))
    return {r["key"]: r for r in rows.fetchall()}


def save_cell(conn: sqlite3.Connection, key: str, file: str | None, face, features, entropy, noise,
              clip_score=None, aesthetic=None, error: str | None = None, content_sha256: str | None = None,
              emotions: dict | None = None) -> None:
    """Write (or replace) one cell's measurements in its own transaction."""
    with transaction(conn):
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


def update_file(conn: sqlite3.Connection, key: str, file: str) -> None:
    """The same image content now lives in another file: keep its measurements, record the new name."""
    conn.execute("UPDATE analysis_cells SET file = ? WHERE key = ?", (file, key))


def save_clip(conn: sqlite3.Connection, key: str, clip_score: float, aesthetic: float | None) -> None:
    conn.execute("UPDATE analysis_cells SET clip_score = ?, aesthetic = COALESCE(?, aesthetic) WHERE key = ?",
                 (clip_score, aesthetic, key))


def save_scores(conn: sqlite3.Connection, scores, meta: dict) -> None:
    """Replace every score table with ``scores`` (an ``analysis.scores.Scores``) in one transaction."""
    with transaction(conn):
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


def load_meta(conn: sqlite3.Connection) -> dict:
    return {r["name"]: json.loads(r["value"]) for r in conn.execute("SELECT name, value FROM analysis_meta")}
