"""File names made from user text stay inside their folder."""

import pytest

from expressiongrid.paths import safe_filename


@pytest.mark.parametrize("text, expected", [
    ("demo", "demo"),
    ("../../etc/passwd", "etc_passwd"),
    ("my study: v2", "my_study_v2"),
    ("<b>x</b>:*?", "b_x_b"),
    ("..", "untitled"),
    ("", "untitled"),
    ("C:\\Windows\\x", "C_Windows_x"),
    ("smiling, mouth open", "smiling_mouth_open"),
    ("Ärger", "Ärger"),
])
def test_safe_filename(text, expected):
    assert safe_filename(text) == expected


def test_safe_filename_is_never_a_path_and_never_long():
    name = safe_filename("/" + "a/" * 200)
    assert "/" not in name and len(name) <= 80 and not name.startswith(".")
