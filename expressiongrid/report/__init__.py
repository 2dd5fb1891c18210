"""Reports of a run: a self-contained HTML page, a Markdown article and a post bundle for civitai.

``write_report(run_dir)`` reads the run's database (cells, analysis scores, human judgements) and writes
``report/report.html``, ``report/article.md`` and ``report/post/`` inside the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    bundle: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 max_images: int = 20) -> ReportFiles:
    """Write the HTML report, the Markdown article and the post bundle (at most ``max_images`` images)."""
    from expressiongrid.output.images import atomic_write
    from expressiongrid.report.bundle import write_post_bundle
    from expressiongrid.report.data import load_report_data
    from expressiongrid.report.html import render_html
    from expressiongrid.report.markdown import render_markdown
    from expressiongrid.errors import UsageError
    from expressiongrid.paths import unwritable
    from expressiongrid.store import Store

    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    with Store.open_read_only(run_dir) as store:  # read only: a run on a read-only disk reports to --out
        data = load_report_data(store)
    why = unwritable(run_dir) if out_dir is None else None
    if why:
        raise UsageError(f"the run folder {run_dir} {why}, and the report goes into it by default: give --out a "
                         "folder to write the report to")
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = out / "post"
    bundle = write_post_bundle(data, bundle_dir, max_images)
    html_path = atomic_write(out / "report.html", lambda fh: fh.write(render_html(data).encode("utf-8")))
    md = render_markdown(data, bundle, bundle_dir, out)
    md_path = atomic_write(out / "article.md", lambda fh: fh.write(md.encode("utf-8")))
    return ReportFiles(html=html_path, markdown=md_path, bundle=bundle, notes=list(data.notes))
