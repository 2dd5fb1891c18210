"""`expressiongrid report`: HTML report, Markdown article and post bundle from an analysed run."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from PIL import Image
from helpers import face_columns

from expressiongrid.analysis.pipeline import analyze_run
from expressiongrid.analysis.validation import build_validation_run
from expressiongrid.cli import main
from expressiongrid.output.images import CIVITAI_MAX_BYTES, read_parameters
from expressiongrid.report import write_report
from expressiongrid.report.bundle import MAX_POST_IMAGES
from helpers import BOLD_LABEL, EVIL_LABEL, add_grids, labelled_columns

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    build_validation_run(run_dir, labelled_columns()).close()
    add_grids(run_dir, 2)
    analyze_run(run_dir)
    files = write_report(run_dir)
    return run_dir, files


class _Text(HTMLParser):
    """Visible text and the script blocks of a page, as a browser would split them."""

    def __init__(self):
        super().__init__()
        self.text, self.scripts, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._in_script = True
            self.scripts.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if not self._in_script:
            self.text.append(data)


def test_html_is_self_contained_and_shows_heatmap_tables_plots_and_grids(reported):
    run_dir, files = reported
    html = files.html.read_text(encoding="utf-8")
    assert files.html == run_dir / "report" / "report.html"
    # Self-contained: every image is inline, nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert html.count('src="data:image/jpeg;base64,') == 20 + 2  # 20 cell thumbnails + 2 grids
    assert html.count("<svg") == 3 and "Flexibility and identity stability per character" in html
    # The scatter: one dot per character cell with both a fidelity and an identity distance (3 rows x 3 columns).
    assert len(re.findall(r'<circle cx="[\d.]+" cy="[\d.]+" r="5" fill="[^"]+" fill-opacity', html)) == 9
    for heading in ("Expression × character", "Characters", "Expressions", "Plots", "Human judging", "Grids"):
        assert f"<h2>{heading}</h2>" in html
    assert "<p>4 expressions × 5 columns," in html and "<th>expression \\ character</th>" in html
    # The heatmap: one clickable cell per grid cell, shaded by fidelity; no-face cells marked.
    assert len(re.findall(r'<td class="cell[^"]*" data-key=', html)) == 20
    assert len(re.findall(r'<td class="cell nf"', html)) == 4
    assert html.count('<span class="flag"') == 3  # the three swapped-identity cells
    parser = _Text()
    parser.feed(html)
    text = "".join(parser.text)
    assert "no CLIP model given" in text  # the note says why CLIP scores are missing
    assert "easy for the base model but lost with characters" in text


def test_user_labels_are_escaped_everywhere_in_the_html(reported):
    _, files = reported
    html = files.html.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Hopper &lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    parser = _Text()
    parser.feed(html)
    assert EVIL_LABEL in "".join(parser.text) and BOLD_LABEL in "".join(parser.text)
    # Only the page's own two scripts: the cell data (JSON, not run) and the click handler.
    assert [s.get("type") for s in parser.scripts] == ["application/json", None]


def test_markdown_article_has_tables_images_and_escaped_labels(reported):
    run_dir, files = reported
    md = files.markdown.read_text(encoding="utf-8")
    assert md.startswith("# validation: which expressions survive each character")
    assert "| character | flexibility |" in md and "| expression | difficulty |" in md
    assert r"Hopper \<b\>bold\<\/b\> \& co" in md and "<script>" not in md
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert linked == [f"post/{p.name}" for p in files.bundle]
    assert all((files.markdown.parent / link).is_file() for link in linked)


def test_a_report_of_other_axes_names_them(tmp_path):
    # An X/Y/Z plot of steps across and CFG scales down: the report names those axes, not expressions and
    # characters.
    out = tmp_path / "xyz"
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--x", "Steps: 1,2", "--y", "CFG Scale: 5,7,9",
                                       "--seed", "3", "--width", "64", "--height", "48", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = write_report(out)
    html = files.html.read_text(encoding="utf-8")
    assert "<p>3 CFG Scale values × 2 Steps values," in html
    assert "<h2>CFG Scale × Steps</h2>" in html and "<th>CFG Scale \\ Steps</th>" in html
    md = files.markdown.read_text(encoding="utf-8")
    assert md.startswith("# xyz: CFG Scale × Steps\n\n3 CFG Scale values × 2 Steps values.")


def test_article_labels_cannot_inject_links_images_or_html(tmp_path):
    """Rendered as CommonMark with tables and autolinks, a label reads as written and makes no link or image."""
    from markdown_it import MarkdownIt

    from expressiongrid.report.data import ReportData
    from expressiongrid.report.markdown import render_markdown

    evil = {"a": "[click me](https://evil.example/x) ![](https://evil.example/pixel.png)",
            "b": "<img src=https://evil.example/p.png> www.evil.example & <b>bold</b>",
            "c": "Zoë | *not em* `code` https://evil.example"}
    data = ReportData(title="t [x](https://evil.example)", run_dir=tmp_path, rows=[("r", "smile")],
                      columns=list(evil.items()), reference=set(), row_targets={}, cells=[],
                      characters=[{"col_id": k, "is_reference": False, "flexibility": 0.5, "reach": 0.5,
                                   "distinctness": 0.5, "identity_stability": 0.5} for k in evil],
                      expressions=[])
    html = MarkdownIt("commonmark", {"linkify": True}).enable(["table", "linkify"]).render(
        render_markdown(data, [], tmp_path / "post", tmp_path))
    assert "<a " not in html and "<img" not in html and "<b>" not in html and "<em>" not in html
    text = re.sub(r"<[^>]+>", "", html).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = text.replace("&quot;", '"')
    for label in evil.values():
        assert label in text  # shown exactly as the user wrote it


def test_post_bundle_images_are_within_civitai_limits_with_metadata_intact(reported):
    run_dir, files = reported
    assert 0 < len(files.bundle) <= MAX_POST_IMAGES
    grids = [p for p in files.bundle if "-grid-" in p.name]
    cells = [p for p in files.bundle if "-grid-" not in p.name]
    assert len(grids) == 2 and all(p.suffix == ".jpg" for p in grids)
    for path in files.bundle:
        assert path.stat().st_size <= CIVITAI_MAX_BYTES
        with Image.open(path) as im:
            assert max(im.size) <= 65_535
    for i, path in enumerate(grids):
        assert read_parameters(path) == read_parameters(run_dir / "grids" / f"validation-{i:02d}.png")
    # Each character's best cell, then identity-flagged cells, each with its own cell's parameters.
    from expressiongrid.store import Store

    with Store.open_existing(run_dir) as store:
        params = {c.parameters for c in store.cells()}
    assert cells and all(read_parameters(p) in params for p in cells)
    assert any("swap" in read_parameters(p) for p in cells)


def test_bundle_is_capped_at_twenty_images_and_rewritten_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    cols = dict(list(face_columns().items())[:2])
    build_validation_run(run_dir, cols).close()
    add_grids(run_dir, 23)
    analyze_run(run_dir)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    post = sorted((tmp_path / "site" / "post").iterdir())
    assert len(post) == 20 and all("-grid-" in p.name for p in post)
    files = write_report(run_dir, tmp_path / "site", max_images=3)
    assert sorted((tmp_path / "site" / "post").iterdir()) == sorted(files.bundle) and len(files.bundle) == 3


def test_report_before_analysis_shows_grids_and_says_how_to_get_scores(tmp_path):
    run_dir = tmp_path / "run"
    build_validation_run(run_dir, dict(list(face_columns().items())[:1])).close()
    add_grids(run_dir, 1)
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "expressiongrid analyze RUN_DIR" in result.output
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "has not been analysed yet" in html and "No scores yet." in html


def test_report_includes_human_rankings_and_their_agreement_with_fidelity(tmp_path):
    from expressiongrid.judge.app import JudgeApp
    from expressiongrid.store import Store

    run_dir = tmp_path / "run"
    build_validation_run(run_dir, dict(list(face_columns().items())[:3])).close()
    analyze_run(run_dir)
    with Store.open_existing(run_dir) as store:
        app = JudgeApp(store, seed=0)
        answered = 0
        while (shown := app.next_pair("Ann")) is not None and answered < 30:
            time.sleep(0)
            app.answer(shown.token, "left")
            answered += 1
    html = write_report(run_dir).html.read_text(encoding="utf-8")
    assert f"{answered} answers by 1 judge " in html
    assert "Agreement of measured fidelity with people's expression rankings" in html
    assert "<th>wins / comparisons</th>" in html


def test_commands_need_a_run_folder(tmp_path):
    for command in ("analyze", "report"):
        result = CliRunner().invoke(main, [command, str(tmp_path / "nothing")])
        assert result.exit_code == 2 and "no run in" in result.output
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "Example:" in help_text


def test_demo_run_without_faces_is_analysed_and_reported(tmp_path):
    """The tiny model paints noise: every cell is a "no face" finding, and nothing crashes."""
    run_dir = tmp_path / "demo"
    runner = CliRunner()
    env = {"EXPRESSIONGRID_NO_PROGRESS": "1"}
    assert runner.invoke(main, ["demo", "--out", str(run_dir)], env=env).exit_code == 0
    result = runner.invoke(main, ["analyze", str(run_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert "measured 27, skipped 0 (already analysed) of 27 cells; 27 without a face" in result.output
    result = runner.invoke(main, ["report", str(run_dir)], env=env)
    assert result.exit_code == 0, result.output
    html = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert html.count('<td class="cell nf"') == 27
    assert "not measured: no face in the reference column" in html
    [grid] = sorted((run_dir / "report" / "post").iterdir())
    assert read_parameters(grid) == read_parameters(run_dir / "grids" / "demo.png")
    # the embedding column's prompts are shown as its images state them: by file stem, as A1111 names it
    from expressiongrid.characters.demo import DEMO_EMBEDDING_TOKEN
    from expressiongrid.report.data import load_report_data
    from expressiongrid.store import Store

    with Store.open_existing(run_dir) as store:
        cells = load_report_data(store).cells
    embedded = [c for c in cells if "demo_embedding" in c.parameters]
    assert embedded and all("demo_embedding" in c.prompt and DEMO_EMBEDDING_TOKEN not in c.prompt for c in embedded)
