"""Fault isolation: a broken character fails its column, NaN cells fail instead of saving black images,
CUDA out-of-memory halves the batch and at batch size 1 fails only the cell. The run log and --notify
report it all."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from expressiongrid.cli import main
from helpers import cells, demo_characters, done_images, make_misfit_lora, open_verified, run_cli, write_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

GREY = (0x9A, 0x9A, 0x9A)  # the background of output.grid.failed_cell


def grey_pixels(pixels: np.ndarray) -> int:
    return int(np.all(pixels == GREY, axis=-1).sum())


def failed_marker_pixels() -> int:
    from expressiongrid.output.grid import failed_cell

    return grey_pixels(np.asarray(failed_cell(64, 64)))


@pytest.fixture(scope="module")
def characters(tmp_path_factory):
    return demo_characters(tmp_path_factory.mktemp("chars"))


class _Hook:
    """A local webhook receiver (http.server on 127.0.0.1) recording the JSON bodies posted to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/night"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_broken_character_fails_its_column_the_rest_completes_and_everyone_is_told(tmp_path, characters):
    make_misfit_lora(characters)
    # A download cut short: the header promises more bytes than the file has.
    (characters / "cut_lora.safetensors").write_bytes((characters / "demo_lora.safetensors").read_bytes()[:5000])
    study = write_study(tmp_path, "faults", characters,
                        files=("demo-lora.toml", "misfit_lora.safetensors", "cut_lora.safetensors",
                               "demo-embedding.toml"),
                        rows=("neutral", "angry"))
    out = tmp_path / "out"
    hook = _Hook()
    try:
        result = run_cli("run", str(study), "--out", str(out), "--notify", hook.url)
    finally:
        hook.close()

    # The exit code says "incomplete", and the summary names the column and why.
    assert result.returncode == 1, result.stderr[-2000:]
    assert "failed: misfit_lora / neutral: character 'misfit_lora'" in result.stderr
    assert "does not fit the model's layer" in result.stderr
    assert "failed: cut_lora / angry: character 'cut_lora'" in result.stderr and "truncated" in result.stderr
    assert "run incomplete: 4 of 10 images failed" in result.stderr

    # Recorded: the broken column's cells failed with the reason; every other cell is done.
    by_column: dict[str, set[str]] = {}
    for c in cells(out):
        by_column.setdefault(c["col_label"], set()).add(c["status"])
        if c["status"] == "failed":
            assert ("does not fit" in c["error"] or "truncated" in c["error"]) and c["file"] is None
    assert by_column == {"reference": {"done"}, "demo LoRA": {"done"}, "misfit_lora": {"failed"},
                         "cut_lora": {"failed"}, "demo embedding": {"done"}}
    assert len(done_images(out)) == 6

    # Shown: the grid has the four failed cells as marked placeholders, not missing or black cells.
    grid = open_verified(out / "grids" / "faults.png")
    assert grey_pixels(grid) == pytest.approx(4 * failed_marker_pixels(), abs=40)

    # Logged: versions, the resolved study, and each failure at ERROR level.
    log = (out / "run.log").read_text()
    assert "version torch: " in log and "version diffusers: " in log and "version gpu: " in log
    assert "resolved study: " in log and "misfit_lora.safetensors" in log
    assert log.count("ERROR   expressiongrid: cell misfit_lora /") == 2
    assert log.count("ERROR   expressiongrid: cell cut_lora /") == 2
    assert "WARNING expressiongrid: column 'cut_lora' will fail: " in log  # known before the first image

    # Notified: one JSON summary naming what failed and why.
    (body,) = hook.bodies
    assert body["status"] == "incomplete" and body["exit_code"] == 1
    assert (body["cells_total"], body["cells_done"], body["cells_failed"]) == (10, 6, 4)
    misfit, cut = sorted(body["failures"], key=lambda f: f["column"], reverse=True)
    assert misfit["column"] == "misfit_lora" and sorted(misfit["rows"]) == ["angry", "neutral"]
    assert "does not fit" in misfit["error"]
    assert cut["column"] == "cut_lora" and "truncated" in cut["error"]
    assert "notification sent to http://127.0.0.1" in log


def test_nan_images_after_the_fp32_retry_are_failed_cells_not_black_images(tmp_path, characters, monkeypatch):
    import torch

    import expressiongrid.engine.denoise as denoise

    real_decode = denoise._decode
    calls = []

    def nan_first_image(vae, latents):
        # The first image of every decode (fp16 overflow in real life) comes out NaN, also on the fp32 retry.
        pixels = real_decode(vae, latents)
        calls.append(latents.shape[0])
        pixels[0] = torch.nan
        return pixels

    monkeypatch.setattr(denoise, "_decode", nan_first_image)
    study = write_study(tmp_path, "nan", characters, files=("demo-embedding.toml",), rows=("neutral", "smiling"),
                        batch_size=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert 1 in calls  # the fp32 retry decoded the bad image again, alone
    failed = [c for c in cells(out) if c["status"] == "failed"]
    assert sorted(c["row_label"] for c in failed) == ["neutral", "neutral"]  # first row of each column
    for c in failed:
        assert "NaN" in c["error"] and c["file"] is None
    assert not any(p.name.startswith(tuple(c["key"] for c in failed)) for p in (out / "cells").rglob("*.png"))
    for pixels in done_images(out).values():
        assert pixels.max() > 0  # no black image was saved as a result
    assert "NaN" in (out / "run.log").read_text()


def _oom(message="CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity)"):
    import torch

    return torch.cuda.OutOfMemoryError(message)


def test_out_of_memory_halves_the_batch_and_carries_on(tmp_path, characters, monkeypatch):
    import expressiongrid.engine.generation as generation

    study = write_study(tmp_path, "oom", characters, files=("demo-embedding.toml",),
                        rows=("neutral", "smiling", "angry", "sad"), batch_size=4)
    reference = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "ref"), "--batch-size", "1"])
    assert reference.exit_code == 0, reference.output

    real_run_batch = generation._run_batch
    sizes = []

    def small_gpu(model, requests, *args, **kwargs):
        sizes.append(len(requests))
        if len(requests) > 1:  # only one image at a time fits
            raise _oom()
        return real_run_batch(model, requests, *args, **kwargs)

    monkeypatch.setattr(generation, "_run_batch", small_gpu)
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    # Two columns of four rows: in the first 4 fails, 2 fails, then the four images one at a time; the
    # second starts at the size that fitted (no out-of-memory again, column after column, all night).
    assert sizes == [4, 2, 1, 1, 1, 1] + [1, 1, 1, 1]
    assert {c["status"] for c in cells(tmp_path / "out")} == {"done"}
    expected, got = done_images(tmp_path / "ref"), done_images(tmp_path / "out")
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_out_of_memory_at_batch_one_fails_the_cell_not_the_run(tmp_path, characters, monkeypatch):
    import expressiongrid.engine.generation as generation

    real_run_batch = generation._run_batch

    def angry_never_fits(model, requests, *args, **kwargs):
        if any("angry" in r.prompt for r in requests):
            raise _oom()
        return real_run_batch(model, requests, *args, **kwargs)

    monkeypatch.setattr(generation, "_run_batch", angry_never_fits)
    study = write_study(tmp_path, "oom1", characters, files=("demo-embedding.toml",),
                        rows=("neutral", "angry", "sad"), batch_size=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 1, result.output
    by_row = {}
    for c in cells(out):
        by_row.setdefault(c["row_label"], set()).add(c["status"])
        if c["status"] == "failed":
            assert "out of memory at batch size 1" in c["error"]
    assert by_row == {"neutral": {"done"}, "angry": {"failed"}, "sad": {"done"}}
    assert (out / "grids" / "oom1.png").is_file()
    assert "out of memory" in (out / "run.log").read_text()
