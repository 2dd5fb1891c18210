"""Human judging: pairwise comparisons of a run's cells in a local web page, turned into rankings.

- ``questions``: the questions a run yields (per expression across characters, per character identity)
- ``db``: the ``judgements`` table (registered as the "judge" migrations of the run store)
- ``bt``: Bradley–Terry fits with Laplace uncertainty; ``selection``: which pair to ask next
- ``agreement``: Kendall tau, pairwise accuracy, agreement between judges
- ``rankings``: ``rankings_for_store(store)`` and ``agreement_with_scores(store, scores)`` for reports
- ``app`` / ``server``: the web app (stdlib HTTP server)

See docs/judging.md. Nothing here imports torch.
"""
