"""The ``judgements`` table in the run's SQLite database, and reading/writing answers.

One row per answer a person gave on the judging page: which question, which two cells in which order on
screen, the answer relative to that order, the judge's name and the time. Keeping the displayed order (not
just the winner) lets us check for side bias later. The table is one of the run folder's tables
(``store.schema``, component "judge"): every store creates it, and old runs gain it when next opened.
"""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from expressiongrid.errors import UsageError
from expressiongrid.judge.bt import Outcome

ANSWERS = ("left", "right", "equal", "skip")
MAX_JUDGE_NAME = 64


@dataclass(frozen=True)
class Judgement:
    """One stored answer. ``answer`` is relative to the screen: "left", "right", "equal" or "skip"."""

    question_id: str
    left_key: str
    right_key: str
    answer: str
    judge: str
    created_at: float
    seconds: float | None = None
    id: int | None = None

    def outcome(self) -> Outcome | None:
        """The answer as a Bradley–Terry outcome; None for a skip (it says nothing about order)."""
        if self.answer == "skip":
            return None
        winner = {"left": self.left_key, "right": self.right_key, "equal": None}[self.answer]
        return Outcome(self.left_key, self.right_key, winner)


def clean_judge_name(name: str) -> str:
    """A judge's name as stored and compared: Unicode NFC (an accent typed precomposed or combining is the same
    name), whitespace trimmed, 1–64 printable characters. Invisible characters (zero-width spaces and
    joiners, direction controls: ``str.isprintable`` is false for them) are refused, not dropped, so two
    names that look the same are one judge. Raises ``UsageError`` otherwise."""
    name = unicodedata.normalize("NFC", name or "").strip()
    if not name:
        raise UsageError("a judge name is needed (type your name on the page, or pass --judge NAME)")
    if len(name) > MAX_JUDGE_NAME:
        raise UsageError(f"judge name is {len(name)} characters long; use at most {MAX_JUDGE_NAME}")
    hidden = [f"U+{ord(ch):04X}" for ch in dict.fromkeys(name) if not ch.isprintable()]
    if hidden:
        raise UsageError(f"judge name contains invisible or control characters ({', '.join(hidden)}); "
                         "use plain text")
    return name


def record_judgement(conn: sqlite3.Connection, judgement: Judgement) -> int:
    """Store one answer and return its row id. Raises ``UsageError`` for an unknown answer."""
    if judgement.answer not in ANSWERS:
        raise UsageError(f"unknown answer {judgement.answer!r}; expected one of {', '.join(ANSWERS)}")
    cur = conn.execute(
        "INSERT INTO judgements(question_id, left_key, right_key, answer, judge, created_at, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (judgement.question_id, judgement.left_key, judgement.right_key, judgement.answer,
         clean_judge_name(judgement.judge), judgement.created_at or time.time(), judgement.seconds),
    )
    return int(cur.lastrowid)


def load_judgements(conn: sqlite3.Connection, judge: str | None = None) -> list[Judgement]:
    """Every stored answer (of one judge if given), oldest first."""
    sql = "SELECT id, question_id, left_key, right_key, answer, judge, created_at, seconds FROM judgements"
    args: tuple = ()
    if judge is not None:
        sql += " WHERE judge = ?"
        args = (clean_judge_name(judge),)
    rows = conn.execute(sql + " ORDER BY id", args).fetchall()
    return [
        Judgement(question_id=r[1], left_key=r[2], right_key=r[3], answer=r[4], judge=r[5], created_at=r[6],
                  seconds=r[7], id=r[0])
        for r in rows
    ]


def outcomes_by_question(judgements: Iterable[Judgement]) -> dict[str, list[Outcome]]:
    """Answers grouped per question as outcomes, skips dropped."""
    out: dict[str, list[Outcome]] = {}
    for j in judgements:
        o = j.outcome()
        if o is not None:
            out.setdefault(j.question_id, []).append(o)
    return out
