"""Image writers: metadata readable by other tools, atomic writes, upload-sized copies."""

from __future__ import annotations

import os
import random
import stat

import pytest
from PIL import Image

from expressiongrid.errors import ExpressionGridError
from expressiongrid.output.images import (
    atomic_write,
    current_umask,
    read_parameters,
    save_jpeg,
    save_png,
    save_upload_copy,
    save_webp,
)
from expressiongrid.output.infotext import format_parameters, parse_parameters

PARAMS = format_parameters(
    "closeup of woman, [hair: smiling: 0.2], RAW photo, 日本語 🙂", "naked, 3d",
    steps=20, sampler="Euler a", cfg_scale=7.0, seed=1234, width=64, height=64,
    hashes={"model": "0123456789"},
)


def _noise(w, h, seed=0):
    rnd = random.Random(seed)
    return Image.frombytes("RGB", (w, h), bytes(rnd.getrandbits(8) for _ in range(w * h * 3)))


def test_png_parameters_chunk_read_by_pillow(tmp_path):
    path = save_png(tmp_path / "cell.png", _noise(64, 64), PARAMS)
    with Image.open(path) as im:
        assert im.info["parameters"] == PARAMS  # what A1111's PNG Info reads
        assert im.size == (64, 64)
    assert parse_parameters(read_parameters(path))["Seed"] == "1234"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.png"]  # no temp file left behind


@pytest.mark.parametrize("save", [save_jpeg, save_webp])
def test_jpeg_and_webp_carry_unicode_user_comment(tmp_path, save):
    path = save(tmp_path / f"cell.{save.__name__[5:]}", _noise(64, 64), PARAMS)
    with Image.open(path) as im:
        comment = im.getexif().get_ifd(0x8769)[0x9286]
    # A1111 (piexif "unicode") and civitai: an 8-byte UNICODE prefix, then UTF-16 big-endian.
    assert comment[:8] == b"UNICODE\x00"
    assert comment[8:].decode("utf-16-be") == PARAMS
    raw = path.read_bytes()
    assert b"\x92\x86\x00\x07" in raw  # UserComment stored as UNDEFINED, as EXIF specifies
    assert read_parameters(path) == PARAMS


def test_crash_during_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "cell.png"

    def crash(fh):
        fh.write(b"\x89PNG half written")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert list(tmp_path.iterdir()) == []
    save_png(target, _noise(8, 8), "old")
    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert read_parameters(target) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cell.png"]


def test_failed_image_encode_is_not_left_under_final_name(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        save_png(tmp_path / "x.png", _noise(8, 8), PARAMS)
    assert not os.listdir(tmp_path)


def test_upload_copy_fits_byte_limit_and_keeps_metadata(tmp_path):
    image = _noise(600, 400)
    path = save_upload_copy(tmp_path / "grid.upload.jpg", image, PARAMS, max_bytes=60_000)
    assert path.stat().st_size <= 60_000
    assert read_parameters(path) == PARAMS
    with Image.open(path) as im:
        assert im.format == "JPEG"
        assert im.width < 600  # noise does not compress: it had to be scaled down


def test_upload_copy_respects_webp_side_limit(tmp_path):
    image = Image.new("RGB", (20_000, 8), "white")
    path = save_upload_copy(tmp_path / "wide.upload.webp", image, PARAMS, fmt="webp")
    with Image.open(path) as im:
        assert im.format == "WEBP" and im.width <= 16_383


def test_jpeg_refuses_sides_it_cannot_store(tmp_path):
    with pytest.raises(ExpressionGridError, match="65535"):
        save_jpeg(tmp_path / "x.jpg", Image.new("RGB", (65_536, 1)), PARAMS)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        image = Image.new("RGB", (32, 32), "red")
        files = [save_png(tmp_path / "a.png", image, "p"), save_jpeg(tmp_path / "a.jpg", image, "p"),
                 save_webp(tmp_path / "a.webp", image, "p"),
                 save_upload_copy(tmp_path / "a.upload.jpg", image, "p"),
                 atomic_write(tmp_path / "report.html", lambda fh: fh.write(b"<p>x</p>"))]
        # Replacing an existing file keeps the rule (the new file is a fresh temporary file renamed over it).
        files.append(save_png(tmp_path / "a.png", image, "again"))
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
        assert current_umask() == umask
        assert not list(tmp_path.glob(".*.tmp"))  # still written atomically: no temporary file left
    finally:
        os.umask(old)
