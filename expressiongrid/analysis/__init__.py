"""Measure what a grid shows: faces, expression features, identity, image quality, scores.

Modules: ``faces`` (dlib detection, 68 landmarks, 128-d identity), ``features`` (expression features from
landmark geometry and the action units they approximate), ``identity`` (descriptor distances and flags),
``quality`` (entropy, noise, optional CLIP and aesthetic scores), ``scores`` (fidelity, flexibility,
stability, difficulty), ``runstore`` (the ``analysis_*`` tables in the run's SQLite database), ``pipeline``
(``analyze_run``) and ``validation`` (photos that ship offline, controlled warps, a validation run).
Everything heavy is imported lazily so the CLI starts instantly and the core install does not need the
``analysis`` extra. docs/scores.md documents every measure and score.
"""
