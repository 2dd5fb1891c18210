"""The judging application: which pair to show next, one-time answer tokens, and the run's images.

Kept apart from the HTTP layer (``server.py``) so the rules that matter — a pair is asked once per judge,
an answer is accepted only for a pair the server actually showed, an image is served only for a known cell
key and only from inside the run folder — are plain methods that tests call directly.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from expressiongrid.errors import StoreError, UsageError
from expressiongrid.judge.db import ANSWERS, Judgement, clean_judge_name, load_judgements, record_judgement
from expressiongrid.judge.questions import Question, build_questions
from expressiongrid.judge.rankings import fit_questions, rankings_from
from expressiongrid.judge.selection import choose_pair, pair_key

MAX_OPEN_TOKENS = 5000  # pages shown but not answered yet; the oldest are forgotten past this
RELOAD_SECONDS = 10.0  # how stale the list of finished cells may get while a run is still going


class InvalidToken(UsageError):
    """An answer arrived for a page this server did not show, or one already answered."""


@dataclass(frozen=True)
class ShownPair:
    """A pair as shown on one page; the token that page carries maps back to exactly this."""

    token: str
    judge: str
    question: Question
    left: str
    right: str
    shown_at: float


class JudgeApp:
    """Judging state for one run folder. Thread-safe: the HTTP server calls it from many threads."""

    def __init__(self, store, *, allow_repeats: bool = False, kinds=("expression", "identity"),
                 seed: int | None = None):
        self.store = store
        self.run_dir = Path(store.run_dir).resolve()
        self.allow_repeats = allow_repeats
        self.kinds = tuple(kinds)
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, ShownPair] = OrderedDict()
        self._rng = random.Random(seed if seed is not None else secrets.randbits(64))
        self._questions: list[Question] = []
        self._files: dict[str, str] = {}
        self._loaded_at = 0.0
        self.reload()
        if not self._questions:
            raise StoreError(
                f"nothing to judge in {self.run_dir}: a question needs at least two finished cells "
                "(finish the run first: expressiongrid run STUDY --out RUN_DIR)"
            )

    # -- run contents -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the cells, so cells finished while the page is open join the questions."""
        with self._lock:
            cells = self.store.cells()
            self._files = {c.key: c.file for c in cells if c.status == "done" and c.file}
            self._questions = build_questions(cells, self.kinds)
            self._loaded_at = time.monotonic()

    @property
    def questions(self) -> list[Question]:
        return list(self._questions)

    def question(self, question_id: str) -> Question | None:
        return next((q for q in self._questions if q.id == question_id), None)

    def cell_path(self, key: str) -> Path | None:
        """The PNG of a finished cell by its key, or None.

        Only keys the store lists are looked up (so no part of a URL ever becomes a path), and the resolved
        file must still lie inside the run folder: a symlink planted under cells/ cannot leak other files.
        """
        relative = self._files.get(key)
        if relative is None:
            return None
        path = (self.run_dir / relative).resolve()
        if not path.is_relative_to(self.run_dir) or path.suffix.lower() != ".png" or not path.is_file():
            return None
        return path

    # -- asking ------------------------------------------------------------------------------------------

    def next_pair(self, judge: str, question_id: str | None = None) -> ShownPair | None:
        """The next pair for ``judge`` (optionally within one question), with a fresh one-time token.
        None when this judge has seen every pair (and repeats were not allowed)."""
        judge = clean_judge_name(judge)
        if time.monotonic() - self._loaded_at > RELOAD_SECONDS:
            self.reload()  # judging can start while the run is still making cells
        questions = self._questions
        if question_id is not None:
            questions = [q for q in questions if q.id == question_id]
            if not questions:
                raise UsageError(f"unknown question {question_id!r}")
        with self._lock:
            everyone = load_judgements(self.store.connection)
            fits = fit_questions(questions, everyone)
            seen = [(j.question_id, j.left_key, j.right_key) for j in everyone if j.judge == judge]
            cand = choose_pair(fits, {q.id: q.items for q in questions}, seen,
                               allow_repeats=self.allow_repeats, rng=self._rng)
            if cand is None:
                return None
            shown = ShownPair(secrets.token_urlsafe(24), judge, self.question(cand.question_id), cand.left,
                              cand.right, time.time())
            self._tokens[shown.token] = shown
            while len(self._tokens) > MAX_OPEN_TOKENS:
                self._tokens.popitem(last=False)
            return shown

    def progress(self, judge: str, question_id: str | None = None) -> tuple[int, int]:
        """(pairs this judge has answered, pairs there are) over the questions in play."""
        questions = [q for q in self._questions if question_id in (None, q.id)]
        total = sum(len(q.items) * (len(q.items) - 1) // 2 for q in questions)
        ids = {q.id for q in questions}
        with self._lock:
            mine = load_judgements(self.store.connection, judge=judge)
        done = len({(j.question_id, *pair_key(j.left_key, j.right_key)) for j in mine if j.question_id in ids})
        return done, total

    def answer(self, token: str, answer: str) -> Judgement:
        """Store the answer to the page that carried ``token``. Each token is accepted once.

        Raises ``InvalidToken`` for an unknown or used token and ``UsageError`` for an unknown answer.
        """
        if answer not in ANSWERS:
            raise UsageError(f"unknown answer {answer!r}; expected one of {', '.join(ANSWERS)}")
        with self._lock:
            shown = self._tokens.pop(token, None)
            if shown is None:
                raise InvalidToken("this page is out of date or was already answered; reload the next pair")
            now = time.time()
            judgement = Judgement(
                question_id=shown.question.id,
                left_key=shown.left,
                right_key=shown.right,
                answer=answer,
                judge=shown.judge,
                created_at=now,
                seconds=round(now - shown.shown_at, 3),
            )
            row_id = record_judgement(self.store.connection, judgement)
        return dataclasses.replace(judgement, id=row_id)

    def shown(self, token: str) -> ShownPair | None:
        return self._tokens.get(token)

    # -- results -----------------------------------------------------------------------------------------

    def rankings(self) -> dict:
        with self._lock:
            judgements = load_judgements(self.store.connection)
        return rankings_from(self._questions, judgements)
