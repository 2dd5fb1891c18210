"""Face analysis on real photos that ship offline, and on controlled warps of them.

Each warp changes one thing a person would see (eyes shut, mouth corners down, mouth open); the features
and action units must move that way by a clear margin, and the others must not swing wildly.
"""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from expressiongrid.analysis import faces, validation
from expressiongrid.analysis.features import (
    FEATURE_NAMES,
    POSE_NAMES,
    au_activations,
    feature_deltas,
    features_from_landmarks,
    target_aus,
)
from expressiongrid.cli import main
from expressiongrid.errors import AnalysisError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SIDE = 256


def _small(image):
    scale = SIDE / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


@pytest.fixture(scope="module", params=["astronaut", "grace_hopper"])
def photo(request):
    image = _small(getattr(validation, request.param)())
    face = faces.analyze_face(image)
    assert face.found, f"no face found in {request.param}"
    return request.param, image, face


def _measure(image):
    face = faces.analyze_face(image)
    assert face.found, "the warped face must still be detected"
    return face, features_from_landmarks(face.landmarks)


def test_real_photos_give_a_face_with_68_landmarks_inside_the_box_and_an_identity(photo):
    name, image, face = photo
    assert face.faces == 1  # the astronaut's mission patch is not a face
    assert len(face.landmarks) == 68 and len(face.embedding) == 128
    left, top, right, bottom = face.box
    inside = [left - 10 <= x <= right + 10 and top - 25 <= y <= bottom + 10 for x, y in face.landmarks]
    assert sum(inside) >= 60
    assert float(np.linalg.norm(face.embedding)) > 0.5


def test_smiling_astronaut_shows_lifted_lip_corners_and_parted_lips_compared_with_grace_hopper():
    astro = features_from_landmarks(faces.analyze_face(_small(validation.astronaut())).landmarks)
    grace = features_from_landmarks(faces.analyze_face(_small(validation.grace_hopper())).landmarks)
    # Eileen Collins smiles with teeth; Grace Hopper's mouth is closed and level.
    assert astro.lip_corner_lift > grace.lip_corner_lift + 0.1
    assert astro.mouth_open > grace.mouth_open + 0.08
    assert astro.mouth_width > grace.mouth_width + 0.1


def test_squashed_eyes_read_as_eyes_closed(photo):
    name, image, face = photo
    rest = features_from_landmarks(face.landmarks)
    _, shut = _measure(validation.squash_eyes(image, face.landmarks))
    d = feature_deltas(shut, rest)
    # Both eyes lose openness on the astronaut; Grace Hopper's glasses blur the lid edges, so one eye
    # moves much more than the other there and the check is on the mean.
    mean_drop = -d["upper_lid"]
    assert mean_drop > (0.08 if name == "astronaut" else 0.01)
    aus = au_activations(shut, rest)
    assert aus["AU43"] > (0.4 if name == "astronaut" else 0.05)
    assert abs(d["mouth_open"]) < 0.03 and aus["AU25"] < 0.2  # the mouth did not move


def test_mouth_corners_pulled_down_read_as_au15_not_au12(photo):
    name, image, face = photo
    rest = features_from_landmarks(face.landmarks)
    _, sad = _measure(validation.pull_mouth_corners_down(image, face.landmarks))
    d = feature_deltas(sad, rest)
    assert d["lip_corner_lift"] < -0.05
    aus = au_activations(sad, rest)
    assert aus["AU15"] > 0.45 and aus["AU12"] == 0.0
    assert aus["AU43"] < 0.2  # the eyes did not move


def test_opened_mouth_reads_as_lips_part_and_jaw_drop(photo):
    name, image, face = photo
    rest = features_from_landmarks(face.landmarks)
    _, opened = _measure(validation.open_mouth(image, face.landmarks))
    d = feature_deltas(opened, rest)
    assert d["mouth_open"] > 0.12 and d["jaw_drop"] > 0.12
    aus = au_activations(opened, rest)
    assert aus["AU25"] > 0.9 and aus["AU26"] > 0.9
    assert aus["AU15"] < 0.3  # opening the lips does not read as a frown (measured from the mouth centre)


def test_warps_keep_the_identity_while_another_person_is_far(photo):
    name, image, face = photo
    other = _small(validation.grace_hopper() if name == "astronaut" else validation.astronaut())
    other_face = faces.analyze_face(other)
    warped, _ = _measure(validation.open_mouth(image, face.landmarks))
    same = float(np.linalg.norm(np.subtract(warped.embedding, face.embedding)))
    different = float(np.linalg.norm(np.subtract(other_face.embedding, face.embedding)))
    assert same < 0.6 < different


def test_images_without_a_face_are_a_result_not_an_error():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    for image in (noise, Image.new("RGB", (64, 64), (128, 128, 128)), Image.new("L", (40, 30))):
        result = faces.analyze_face(image)
        assert result.found is False and result.landmarks == [] and result.embedding is None


def test_features_are_invariant_to_scale_and_head_roll():
    rng = np.random.default_rng(1)
    marks = np.array(faces.analyze_face(_small(validation.astronaut())).landmarks)
    base = features_from_landmarks(marks.tolist()).as_dict()
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (marks @ rot.T) * 2.5 + rng.normal(0, 0, 2) + np.array([40.0, -12.0])
    again = features_from_landmarks(moved.tolist()).as_dict()
    for name in FEATURE_NAMES:
        if name not in POSE_NAMES:
            assert again[name] == pytest.approx(base[name], abs=1e-4)
    assert again["roll"] - base["roll"] == pytest.approx(np.degrees(angle), abs=0.01)
    with pytest.raises(AnalysisError, match="68"):
        features_from_landmarks(marks[:5].tolist())


def test_expression_set_codes_map_to_measured_action_units():
    assert target_aus([6, 12, 25]) == (["AU6", "AU12", "AU25"], [])
    assert target_aus(["R12", "6", "7"]) == (["AU12", "AU6"], ["7"])
    assert target_aus([1, 2, 5, 26, 27]) == (["AU1", "AU2", "AU5", "AU26"], [])
    assert target_aus([41, 43]) == (["AU43"], [])
    assert target_aus([]) == ([], [])


def test_missing_analysis_extra_gives_an_install_hint(monkeypatch, tmp_path):
    faces._models.cache_clear()
    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'", name="dlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "dlib", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_dlib)
    try:
        with pytest.raises(AnalysisError, match=r"pip install 'expressiongrid\[analysis\]'"):
            faces.check_available()
        result = CliRunner().invoke(main, ["analyze", str(tmp_path)])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: face analysis needs dlib and its models (dlib is missing): "
            "install the analysis extra: pip install 'expressiongrid[analysis]'"]
    finally:
        monkeypatch.undo()
        faces._models.cache_clear()
    faces.check_available()  # and it works again with dlib importable


def test_face_or_no_face_on_the_lfw_subset_that_ships_with_scikit_image():
    """skimage.data.lfw_subset(): 100 face crops from Labeled Faces in the Wild, then 100 non-face crops."""
    from skimage.data import lfw_subset

    found = []
    for pixels in lfw_subset():
        # 25 px crops are below dlib's ~40 px minimum face: upscale as a closeup cell would be.
        image = Image.fromarray((pixels * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC)
        found.append(faces.analyze_face(image, with_embedding=False).found)
    assert sum(found[:100]) >= 75  # measured: 84
    assert sum(found[100:]) <= 2  # measured: 0
