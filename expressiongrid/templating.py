"""HTML pages from Jinja2 templates with autoescaping: the report, the judging pages and the grid viewer.

Every value a template prints is HTML-escaped unless it is marked safe, so user text (labels, prompts,
file names, judge names) can never become markup. Data for a page's script goes through Jinja's
``tojson`` filter, which also escapes ``<``, ``>``, ``&`` and ``'`` so it cannot end a ``<script>`` block.
User text shown inside a sentence goes through ``|bdi`` (escaped, in a ``<bdi>`` element) or, where no
element can go (``<title>``, ``<option>``, attributes), ``|isolate`` (``text.isolate``): a label with a
direction override left open (U+202E) then cannot draw the rest of the line backwards.
The templates live in ``expressiongrid/templates/``.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["render_template"]


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined
    from markupsafe import Markup, escape

    from expressiongrid.text import count_noun, isolate

    env = Environment(
        loader=PackageLoader("expressiongrid", "templates"),
        autoescape=True,  # every template, whatever its name: all of them are HTML or SVG
        undefined=StrictUndefined,  # a misspelt variable fails loudly instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # A <bdi> alone is not enough in Chromium: a PDI inside it that closes nothing ends its isolation.
    env.filters["bdi"] = lambda text: Markup("<bdi>%s</bdi>") % escape(isolate(str(text)))
    env.filters["isolate"] = lambda text: isolate(str(text))
    env.filters["counted"] = lambda n, noun: count_noun(int(n), noun)  # {{ n|counted("answer") }}: 1 answer
    return env


def render_template(name: str, **context) -> str:
    """Render ``templates/<name>`` with ``context``; every printed value is HTML-escaped."""
    return _environment().get_template(name).render(**context)
