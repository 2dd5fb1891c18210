"""Rankings from the stored answers, and how well they agree: between judges, and with automatic scores.

``rankings_for_store(store)`` is what the analysis report includes; its shape is documented in
docs/judging.md. ``agreement_with_scores(store, scores)`` checks automatic per-cell scores against what
people chose.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Iterable, Mapping

from expressiongrid.judge.agreement import judge_pair_agreement, pairwise_accuracy, tau_between
from expressiongrid.judge.bt import DEFAULT_PRIOR_SD, BTFit, fit_bradley_terry, summarize_fit
from expressiongrid.judge.db import Judgement, load_judgements, outcomes_by_question
from expressiongrid.judge.questions import Question, build_questions


def fit_questions(questions: Iterable[Question], judgements: Iterable[Judgement],
                  prior_sd: float = DEFAULT_PRIOR_SD) -> dict[str, BTFit]:
    """One Bradley–Terry fit per question over everyone's answers (answers to unknown questions or cells that
    are no longer in the run, e.g. after a rerun changed the plan, are ignored)."""
    grouped = outcomes_by_question(judgements)
    fits = {}
    for q in questions:
        allowed = set(q.items)
        outcomes = [o for o in grouped.get(q.id, []) if o.a in allowed and o.b in allowed]
        fits[q.id] = fit_bradley_terry(q.items, outcomes, prior_sd=prior_sd)
    return fits


def _judge_agreement(questions: list[Question], judgements: list[Judgement], prior_sd: float) -> list[dict]:
    """For each pair of judges: share of identical answers on pairs both judged, and the mean Kendall tau
    between their own per-question rankings (over the cells both compared)."""
    by_judge: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_judge[j.judge].append(j)
    out = []
    for a, b in itertools.combinations(sorted(by_judge), 2):
        oa = [o for o in (j.outcome() for j in by_judge[a]) if o is not None]
        ob = [o for o in (j.outcome() for j in by_judge[b]) if o is not None]
        # Pairs are only "the same pair" within one question.
        shared_total = 0
        same_total = 0.0
        taus = []
        fa = fit_questions(questions, by_judge[a], prior_sd)
        fb = fit_questions(questions, by_judge[b], prior_sd)
        qa, qb = outcomes_by_question(by_judge[a]), outcomes_by_question(by_judge[b])
        for q in questions:
            share, n = judge_pair_agreement(qa.get(q.id, []), qb.get(q.id, []))
            if n:
                shared_total += n
                same_total += share * n
            seen_a = {k for i, k in enumerate(fa[q.id].keys) if fa[q.id].comparisons[i] > 0}
            seen_b = {k for i, k in enumerate(fb[q.id].keys) if fb[q.id].comparisons[i] > 0}
            common = seen_a & seen_b
            tau, n_items = tau_between(
                {k: float(fa[q.id].scores[fa[q.id].index(k)]) for k in common},
                {k: float(fb[q.id].scores[fb[q.id].index(k)]) for k in common},
            )
            if tau is not None:
                taus.append((tau, n_items))
        weight = sum(n for _, n in taus)
        out.append(
            {
                "judges": [a, b],
                "shared_pairs": shared_total,
                "pair_agreement": round(same_total / shared_total, 4) if shared_total else None,
                "kendall_tau": round(sum(t * n for t, n in taus) / weight, 4) if weight else None,
                "questions": len(taus),
                "answers": [len(oa), len(ob)],
            }
        )
    return out


def rankings_from(questions: list[Question], judgements: list[Judgement],
                  prior_sd: float = DEFAULT_PRIOR_SD) -> dict:
    """Rankings for ``questions`` from ``judgements`` (see ``rankings_for_store`` for the shape)."""
    fits = fit_questions(questions, judgements, prior_sd)
    per_question_answers: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        per_question_answers[j.question_id].append(j)
    out_questions = []
    for q in questions:
        answers = per_question_answers.get(q.id, [])
        entry = q.to_dict()
        entry["answers"] = len(answers)
        entry["decided"] = sum(1 for j in answers if j.answer in ("left", "right"))
        entry["equal"] = sum(1 for j in answers if j.answer == "equal")
        entry["skipped"] = sum(1 for j in answers if j.answer == "skip")
        entry["judges"] = sorted({j.judge for j in answers})
        entry["items"] = summarize_fit(fits[q.id], q.labels)
        out_questions.append(entry)
    judges: dict[str, int] = defaultdict(int)
    for j in judgements:
        judges[j.judge] += 1
    return {
        "model": "bradley-terry",
        "ties": "equal counts as half a win for each side; skips are ignored",
        "prior_sd": prior_sd,
        "answers": len(judgements),
        "judges": [{"name": name, "answers": n} for name, n in sorted(judges.items())],
        "questions": out_questions,
        "judge_agreement": _judge_agreement(questions, list(judgements), prior_sd),
    }


def rankings_for_store(store, prior_sd: float = DEFAULT_PRIOR_SD) -> dict:
    """Human rankings of a run, ready for a report: one Bradley–Terry ranking per question.

    ``store`` is an open ``expressiongrid.store.Store``. The result is plain JSON-ready data;
    docs/judging.md documents every field. A run nobody has judged yet gives every question with all
    scores 0 and ``answers`` 0.
    """
    questions = build_questions(store.cells())
    return rankings_from(questions, load_judgements(store.connection), prior_sd)


def agreement_with_scores_from(questions: list[Question], judgements: list[Judgement],
                               scores: Mapping[str, float], kind: str | None = None,
                               higher_is_better: bool = True, prior_sd: float = DEFAULT_PRIOR_SD) -> dict:
    """See ``agreement_with_scores``; works on questions and answers already loaded."""
    sign = 1.0 if higher_is_better else -1.0
    signed = {k: sign * float(v) for k, v in scores.items()}
    fits = fit_questions(questions, judgements, prior_sd)
    grouped = outcomes_by_question(judgements)
    rows = []
    tau_weighted = tau_weight = 0.0
    hits = used_total = 0.0
    for q in questions:
        if kind is not None and q.kind != kind:
            continue
        fit = fits[q.id]
        # Only cells people actually compared carry a human ranking; the rest sit at the prior mean.
        judged = {k: float(fit.scores[i]) for i, k in enumerate(fit.keys) if fit.comparisons[i] > 0}
        tau, n_items = tau_between(judged, signed)
        acc, used = pairwise_accuracy(grouped.get(q.id, []), signed)
        if tau is None and acc is None:
            continue
        rows.append({"id": q.id, "kind": q.kind, "subject": q.subject, "kendall_tau": tau, "items": n_items,
                     "pairwise_accuracy": acc, "answers": used})
        if tau is not None:
            tau_weighted += tau * n_items
            tau_weight += n_items
        if acc is not None:
            hits += acc * used
            used_total += used
    return {
        "kind": kind,
        "higher_is_better": higher_is_better,
        "kendall_tau": round(tau_weighted / tau_weight, 4) if tau_weight else None,
        "pairwise_accuracy": round(hits / used_total, 4) if used_total else None,
        "answers": int(used_total),
        "questions": rows,
    }


def agreement_with_scores(store, scores: Mapping[str, float], kind: str | None = None,
                          higher_is_better: bool = True) -> dict:
    """How well automatic per-cell ``scores`` (cell key -> number) agree with what people chose.

    ``kind`` limits the check to "expression" or "identity" questions (an expression-strength score should
    be checked against expression questions, an identity similarity against identity ones). Returns
    ``kendall_tau`` (between the human Bradley–Terry ranking and the scores, averaged over questions
    weighted by the number of cells), ``pairwise_accuracy`` (share of people's decided answers the scores
    order the same way), ``answers`` and a per-question breakdown in ``questions``.
    """
    questions = build_questions(store.cells())
    return agreement_with_scores_from(questions, load_judgements(store.connection), scores, kind,
                                      higher_is_better)
