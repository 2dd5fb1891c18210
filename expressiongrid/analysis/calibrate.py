"""Deriving the analysis's constants from the tuning photos (``face_photos.toml``, split "tune").

``derive(landmarks)`` turns the 68 landmarks of every tuning image into what ``face_scales.json`` holds:

- ``mean_shape``: the generic face's frontal layout, the median of the eye-levelled neutral tuning faces,
  made left-right symmetric;
- ``generic_neutral``: the median features of the neutral and non-smiling tuning faces (for a face whose
  own neutral is unknown);
- ``full_scale`` per AU: the 90th percentile of the AU's feature change (in the AU's direction, against the
  face's own neutral or the generic one) over every expressive tuning image, so a typical strong real
  expression reads near 1 and a half-strength one near 0.5;
  an AU that no tuning image shows (AU5, AU15) borrows the scale of its feature's other direction;
- ``rest_spread`` per AU: the 95th percentile of the same change between neutral frames of one person and
  their median, in intensity units: how much a face at rest wobbles (detector jitter).

``scripts/derive_face_scales.py`` runs it and writes the file; a test checks the shipped file matches.
"""

from __future__ import annotations

import statistics

from expressiongrid.analysis.features import AU_FEATURE, FEATURE_NAMES, features_from_landmarks, level_landmarks

NEUTRAL_EXPRESSIONS = ("neutral",)
RESTING_EXPRESSIONS = ("neutral", "other-not-smiling")
# Mirror of each iBUG landmark (the subject's right <-> left).
MIRROR = ([16 - i for i in range(17)] + [26 - i for i in range(10)] + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
          + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
          + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


def _percentile(values, q):
    values = sorted(values)
    if not values:
        return 0.0
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _median_features(rows):
    return {name: statistics.median(r[name] for r in rows) for name in FEATURE_NAMES}


def mean_shape(landmark_sets) -> list[list[float]]:
    """Median eye-levelled layout of some faces, symmetric, centred on the nose's x."""
    levelled = [level_landmarks(p) for p in landmark_sets]
    med = [(statistics.median(p[i][0] for p in levelled), statistics.median(p[i][1] for p in levelled))
           for i in range(68)]
    nose_x = statistics.median(med[i][0] for i in range(27, 36))
    med = [(x - nose_x, y) for x, y in med]
    return [[round((med[i][0] - med[MIRROR[i]][0]) / 2, 4), round((med[i][1] + med[MIRROR[i]][1]) / 2, 4)]
            for i in range(68)]


def derive(items, landmarks: dict) -> dict:
    """The constants of ``face_scales.json`` from labelled tuning ``items`` and their landmarks by item id
    (``None`` where no face was found: such items are left out and counted)."""
    found = [it for it in items if landmarks.get(it.id)]
    neutral_lm = [landmarks[it.id] for it in found if it.expression in NEUTRAL_EXPRESSIONS
                  or (it.person is None and it.expression in RESTING_EXPRESSIONS)]
    shape = mean_shape(neutral_lm)
    feats = {it.id: features_from_landmarks(landmarks[it.id], shape).as_dict() for it in found}

    persons = {it.person for it in found if it.person}
    own_neutral = {p: _median_features([feats[it.id] for it in found
                                        if it.person == p and it.expression == "neutral"]) for p in persons}
    generic = _median_features([feats[it.id] for it in found if it.expression in RESTING_EXPRESSIONS])

    def delta(it):
        base = own_neutral.get(it.person, generic) if it.person else generic
        return {k: feats[it.id][k] - base[k] for k in FEATURE_NAMES}

    expressive = [it for it in found if it.expression not in RESTING_EXPRESSIONS]
    at_rest = [it for it in found if it.person and it.expression == "neutral"]
    scales, spread = {}, {}
    for au, (name, sign) in AU_FEATURE.items():
        moves = [max(0.0, sign * delta(it)[name]) for it in expressive]
        scales[au] = round(_percentile(moves, 0.9), 4)
    borrowed = {}
    for au, (name, _sign) in AU_FEATURE.items():
        if scales[au] <= 0:
            # No tuning expression moves this feature this way (no lowered mouth corners, no widened lids):
            # the same feature's other direction gives the scale.
            twin = next(a for a, (n, _s) in AU_FEATURE.items() if n == name and a != au)
            scales[au] = scales[twin]
            borrowed[au] = twin
        wobble = [abs(delta(it)[name]) for it in at_rest]
        spread[au] = round(_percentile(wobble, 0.95) / scales[au], 3)
    return {
        "rule": "full_scale = 90th percentile of the AU's feature change over the expressive tuning images; "
                "rest_spread = 95th percentile of neutral frames' change against their median, / full_scale",
        "tuning_images": len(items),
        "tuning_faces_found": len(found),
        "expressive_images": len(expressive),
        "mean_shape": shape,
        "generic_neutral": {k: round(v, 4) for k, v in generic.items()},
        "full_scale": scales,
        "scale_borrowed_from": borrowed,
        "rest_spread": spread,
    }
