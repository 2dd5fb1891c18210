"""Which questions a run produces (built from cell records alone, no server)."""

from __future__ import annotations

from dataclasses import dataclass

from expressiongrid.judge.questions import build_questions


@dataclass
class Cell:
    key: str
    row_index: int
    col_index: int
    row_id: str
    row_label: str
    col_id: str
    col_label: str
    page: int = 0
    page_label: str = ""
    status: str = "done"
    file: str | None = "cells/x.png"


def grid(rows, cols, pages=1, samples=1):
    out = []
    for p in range(pages):
        for ci, (cid, clabel) in enumerate(cols):
            for ri, (rid, rlabel) in enumerate(rows):
                for s in range(samples):
                    out.append(Cell(f"{p}-{rid}-{cid}-{s}", ri, ci, rid, rlabel, cid, clabel, p, f"seed {p}"))
    return out


COLS = [("reference", "Reference"), ("alice", "Alice")]


def test_exact_neutral_row_wins_over_one_that_only_mentions_it():
    rows = [("almost", "near neutral, sleepy"), ("smile", "smile"), ("neutral", "neutral"), ("sad", "sad")]
    ident = {q.id: q for q in build_questions(grid(rows, COLS))}["ident:alice:p0"]
    assert ident.reference_key == "0-neutral-alice-0"
    assert sorted(ident.labels.values()) == ["near neutral, sleepy", "sad", "smile"]


def test_without_a_neutral_row_the_first_expression_is_the_reference():
    rows = [("calm", "calm"), ("smile", "smile"), ("sad", "sad")]
    ident = {q.id: q for q in build_questions(grid(rows, COLS))}["ident:alice:p0"]
    assert ident.reference_key == "0-calm-alice-0"


def test_pages_make_separate_questions_and_repeated_seeds_are_numbered():
    rows = [("neutral", "neutral"), ("smile", "smiling, closed mouth"), ("sad", "sad")]
    qs = {q.id: q for q in build_questions(grid(rows, COLS, pages=2, samples=2))}
    assert {"expr:smile:p0", "expr:smile:p1", "ident:alice:p1"} <= set(qs)
    smile = qs["expr:smile:p1"]
    assert smile.page_label == "seed 1" and set(smile.items) == {
        "1-smile-reference-0", "1-smile-reference-1", "1-smile-alice-0", "1-smile-alice-1"}
    assert sorted(smile.labels.values()) == ["Alice #1", "Alice #2", "Reference #1", "Reference #2"]
    # Other seeds of the neutral row are not items of the identity question: only expressions are.
    assert all("neutral" not in k for k in qs["ident:alice:p0"].items)


def test_only_the_asked_kinds_are_built():
    rows = [("neutral", "neutral"), ("smile", "smile"), ("sad", "sad")]
    assert {q.kind for q in build_questions(grid(rows, COLS), kinds=["identity"])} == {"identity"}
