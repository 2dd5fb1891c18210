"""Ranking math on simulated judges with a known true order (no browser, no model)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from expressiongrid.judge.agreement import judge_pair_agreement, kendall_tau, pairwise_accuracy
from expressiongrid.judge.bt import DEFAULT_PRIOR_SD, Outcome, fit_bradley_terry
from expressiongrid.judge.db import Judgement
from expressiongrid.judge.questions import Question
from expressiongrid.judge.rankings import agreement_with_scores_from, fit_questions, rankings_from
from expressiongrid.judge.selection import choose_pair, pair_key

KEYS = [f"cell{i:02d}" for i in range(8)]
# True strengths: cell00 weakest ... cell07 strongest, spaced so neighbours are genuinely hard to tell apart.
TRUE = {k: 0.6 * i for i, k in enumerate(KEYS)}


def simulated_answer(left: str, right: str, rng: random.Random, truth=TRUE) -> str:
    """A person who follows Bradley–Terry with the true strengths."""
    p_left = 1.0 / (1.0 + math.exp(-(truth[left] - truth[right])))
    return "left" if rng.random() < p_left else "right"


def simulate(n_answers: int, seed: int, active: bool = True, judge: str = "sim") -> list[Judgement]:
    """``n_answers`` answers from one simulated judge to a single question over KEYS."""
    rng = random.Random(seed)
    question = Question(id="q", kind="expression", text="?", subject="x", items=list(KEYS))
    judgements: list[Judgement] = []
    for t in range(n_answers):
        if active:
            fits = fit_questions([question], judgements)
            seen = [(j.question_id, j.left_key, j.right_key) for j in judgements]
            cand = choose_pair(fits, {"q": KEYS}, seen, allow_repeats=True, rng=rng)
            left, right = cand.left, cand.right
        else:
            left, right = rng.sample(KEYS, 2)
        answer = simulated_answer(left, right, rng)
        judgements.append(Judgement("q", left, right, answer, judge, float(t)))
    return judgements


def tau_after(judgements: list[Judgement]) -> float:
    fit = fit_bradley_terry(KEYS, [j.outcome() for j in judgements])
    return kendall_tau([TRUE[k] for k in KEYS], list(fit.scores))


# ---------------------------------------------------------------------------------------------- BT fit


def test_fit_recovers_true_order_from_many_answers():
    rng = random.Random(1)
    outcomes = []
    for _ in range(3000):
        a, b = rng.sample(KEYS, 2)
        outcomes.append(Outcome(a, b, a if simulated_answer(a, b, rng) == "left" else b))
    fit = fit_bradley_terry(KEYS, outcomes)
    assert fit.order() == sorted(KEYS, key=lambda k: -TRUE[k])
    # Strength differences are recovered too (shrunk a little by the prior), not just the order.
    spread = fit.scores[-1] - fit.scores[0]
    assert 3.0 < spread < 4.6, spread


def test_one_item_winning_everything_stays_finite_and_uncertain():
    outcomes = [Outcome("a", "b", "a"), Outcome("a", "c", "a"), Outcome("b", "c", "b")]
    fit = fit_bradley_terry(["a", "b", "c"], outcomes)
    assert np.all(np.isfinite(fit.scores))
    assert fit.order() == ["a", "b", "c"]
    # Three answers are weak evidence: the interval of the top item still overlaps the bottom one.
    se = fit.se
    assert fit.scores[0] - 2 * se[0] < fit.scores[2] + 2 * se[2]


def test_uncertainty_shrinks_as_answers_grow():
    few = simulate(8, seed=3, active=False)
    many = simulate(200, seed=3, active=False)
    se_few = fit_bradley_terry(KEYS, [j.outcome() for j in few]).se.mean()
    se_many = fit_bradley_terry(KEYS, [j.outcome() for j in many]).se.mean()
    assert se_many < 0.5 * se_few


def test_no_answers_means_no_preference():
    fit = fit_bradley_terry(["a", "b"], [])
    assert list(fit.scores) == [0.0, 0.0]
    # Centred scores: with no answers the difference is as unsure as the prior allows (2 items).
    assert fit.difference_variance("a", "b") == pytest.approx(2 * DEFAULT_PRIOR_SD**2)
    assert fit.win_probability("a", "b") == 0.5


def test_equal_answers_tie_and_are_symmetric():
    beaten = [Outcome("c", "a", "c"), Outcome("b", "c", "c")]
    fit = fit_bradley_terry(["a", "b", "c"], [Outcome("a", "b", None)] * 5 + beaten)
    assert fit.scores[0] == pytest.approx(fit.scores[1])
    assert fit.win_probability("a", "b") == pytest.approx(0.5)
    # Ties are evidence the two are close: more ties, smaller variance of their difference.
    assert fit.scores[2] > fit.scores[0]
    fewer = fit_bradley_terry(["a", "b", "c"], [Outcome("a", "b", None)] + beaten)
    assert fit.difference_variance("a", "b") < fewer.difference_variance("a", "b")


def test_outcome_with_unknown_item_is_refused():
    with pytest.raises(ValueError, match="not being ranked"):
        fit_bradley_terry(["a"], [Outcome("a", "zz", "a")])


def test_rank_intervals_cover_the_true_rank_and_narrow_with_data():
    few = fit_bradley_terry(KEYS, [j.outcome() for j in simulate(10, seed=5, active=False)])
    many = fit_bradley_terry(KEYS, [j.outcome() for j in simulate(600, seed=5, active=False)])
    true_rank = {k: len(KEYS) - i for i, k in enumerate(KEYS)}
    width = lambda f: np.mean([hi - lo for lo, hi in f.rank_intervals().values()])  # noqa: E731
    assert width(many) < width(few)
    covered = sum(lo <= true_rank[k] <= hi for k, (lo, hi) in many.rank_intervals().items())
    assert covered >= len(KEYS) - 1


# ----------------------------------------------------------------------------------- recovery and selection


def test_kendall_tau_to_truth_rises_with_the_number_of_answers():
    budgets = [6, 24, 120]
    means = []
    for n in budgets:
        means.append(np.mean([tau_after(simulate(n, seed=s)) for s in range(8)]))
    assert means[0] < means[1] < means[2], means
    assert means[2] > 0.8, means


def test_active_selection_beats_random_pairs_at_a_small_budget():
    budget = 28  # as many answers as there are distinct pairs of 8 cells
    active = np.mean([tau_after(simulate(budget, seed=s, active=True)) for s in range(12)])
    random_pairs = np.mean([tau_after(simulate(budget, seed=s, active=False)) for s in range(12)])
    assert active > random_pairs, (active, random_pairs)


def test_selection_never_repeats_a_pair_for_one_judge_until_all_are_seen():
    q = Question(id="q", kind="expression", text="?", subject="x", items=KEYS[:5])
    rng = random.Random(0)
    judgements: list[Judgement] = []
    pairs = []
    while True:
        seen = [(j.question_id, j.left_key, j.right_key) for j in judgements]
        cand = choose_pair(fit_questions([q], judgements), {"q": q.items}, seen, rng=rng)
        if cand is None:
            break
        pairs.append(pair_key(cand.left, cand.right))
        # Skips count as seen, too: a judge who skipped a pair is not asked it again.
        answer = "skip" if len(pairs) % 3 == 0 else simulated_answer(cand.left, cand.right, rng)
        judgements.append(Judgement("q", cand.left, cand.right, answer, "ann", 0.0))
    assert len(pairs) == 10 == len(set(pairs))
    # Another judge still gets every pair; a judge who asks for repeats gets one more.
    assert choose_pair(fit_questions([q], judgements), {"q": q.items}, [], rng=rng) is not None
    seen = [(j.question_id, j.left_key, j.right_key) for j in judgements]
    assert choose_pair(fit_questions([q], judgements), {"q": q.items}, seen, allow_repeats=True) is not None


def test_selection_moves_away_from_a_settled_pair():
    q = Question(id="q", kind="expression", text="?", subject="x", items=["a", "b", "c", "d"])
    settled = [Judgement("q", "a", "b", "left", "other", 0.0)] * 30
    cand = choose_pair(fit_questions([q], settled), {"q": q.items}, [], rng=random.Random(2))
    assert pair_key(cand.left, cand.right) != ("a", "b")
    assert "c" in (cand.left, cand.right) or "d" in (cand.left, cand.right)


def test_selection_shows_each_item_on_both_sides():
    q = Question(id="q", kind="expression", text="?", subject="x", items=["a", "b"])
    rng = random.Random(4)
    lefts = {choose_pair(fit_questions([q], []), {"q": q.items}, [], rng=rng).left for _ in range(20)}
    assert lefts == {"a", "b"}


# ------------------------------------------------------------------------------------------------ agreement


def test_kendall_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One swapped neighbour among 4: 5 concordant, 1 discordant.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in y: C=5, D=0, one tie -> 5 / sqrt(6 * 5).
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 3]) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau([1, 1], [1, 2]) is None


def test_pairwise_accuracy_counts_decided_answers_only():
    outcomes = [Outcome("a", "b", "a"), Outcome("b", "c", "c"), Outcome("a", "c", None)]
    acc, used = pairwise_accuracy(outcomes, {"a": 3, "b": 2, "c": 1})
    assert used == 2 and acc == pytest.approx(0.5)


def test_two_judges_agreement_on_shared_pairs():
    a = [Outcome("x", "y", "x"), Outcome("y", "z", "y"), Outcome("x", "z", None)]
    # Same pairs, shown the other way round: agreement must not depend on the side.
    b = [Outcome("y", "x", "x"), Outcome("z", "y", "z"), Outcome("z", "x", None)]
    share, n = judge_pair_agreement(a, b)
    assert n == 3 and share == pytest.approx(2 / 3)


def test_rankings_report_judge_agreement_and_score_agreement():
    honest_a = simulate(150, seed=11, judge="ann")
    honest_b = simulate(150, seed=12, judge="bob")
    reversed_truth = {k: -v for k, v in TRUE.items()}
    rng = random.Random(13)
    contrarian = [
        Judgement("q", j.left_key, j.right_key, simulated_answer(j.left_key, j.right_key, rng, reversed_truth),
                  "eve", 0.0)
        for j in honest_a
    ]
    q = Question(id="q", kind="expression", text="?", subject="x", items=list(KEYS))
    result = rankings_from([q], honest_a + honest_b + contrarian)
    by_pair = {tuple(r["judges"]): r for r in result["judge_agreement"]}
    assert by_pair[("ann", "bob")]["kendall_tau"] > 0.6
    assert by_pair[("ann", "eve")]["kendall_tau"] < -0.6
    assert by_pair[("ann", "eve")]["pair_agreement"] < by_pair[("ann", "bob")]["pair_agreement"]
    assert by_pair[("ann", "eve")]["shared_pairs"] > 0

    good = agreement_with_scores_from([q], honest_a + honest_b, TRUE, kind="expression")
    bad = agreement_with_scores_from([q], honest_a + honest_b, reversed_truth, kind="expression")
    assert good["kendall_tau"] > 0.8 and bad["kendall_tau"] < -0.8
    assert good["pairwise_accuracy"] > 0.6 > 0.4 > bad["pairwise_accuracy"]
    # An automatic score where lower means "more" is checked the right way round when told so.
    flipped = agreement_with_scores_from([q], honest_a, reversed_truth, higher_is_better=False)
    assert flipped["kendall_tau"] > 0.8
    # Identity questions are not mixed into an expression check.
    assert agreement_with_scores_from([q], honest_a, TRUE, kind="identity")["questions"] == []


@pytest.mark.parametrize("items,answers_per_item", [(5, 10), (8, 30), (12, 20)])
def test_95_percent_intervals_cover_the_true_strengths_when_items_differ_widely(items, answers_per_item):
    # Neighbours 1.5 logits apart (the top item beats the bottom one of 12 almost always): the prior must not
    # pull the ends together so far that their intervals miss.
    rng = np.random.default_rng(11)
    keys = [f"k{i}" for i in range(items)]
    truth = np.arange(items) * 1.5
    truth -= truth.mean()
    covered = []
    for _ in range(60):
        outcomes = []
        for _ in range(answers_per_item * items // 2):
            i, j = rng.choice(items, 2, replace=False)
            a_wins = rng.random() < 1.0 / (1.0 + np.exp(-(truth[i] - truth[j])))
            outcomes.append(Outcome(keys[i], keys[j], keys[i] if a_wins else keys[j]))
        fit = fit_bradley_terry(keys, outcomes)
        covered.append(np.mean(np.abs(fit.scores - truth) <= 1.959964 * fit.se))
    assert np.mean(covered) >= 0.9
