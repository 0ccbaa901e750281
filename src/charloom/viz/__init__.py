"""See inside a model: one self-contained HTML page showing a text coloured by a hidden unit,
the units that follow simple text features, the model's next-character predictions and its
surprisal along the text.

::

    from charloom.viz import write_page
    write_page("runs/book", open("chapter.txt").read(), "page.html", layer=1, state="c")

The pieces: :mod:`.trace` (run the model, keep every state), :mod:`.features` (text features
and the unit ranking), :mod:`.page` (the data and the HTML).
"""

from .features import Feature, Finding, rank_units, text_features
from .inline import InlinePage, inline_page
from .page import (
    DEFAULT_MAX_CHARS,
    MAX_CHARS,
    PageSummary,
    page_data,
    prepare_text,
    render_page,
    write_html,
    write_page,
)
from .trace import Trace, trace_ids

__all__ = [
    "DEFAULT_MAX_CHARS",
    "MAX_CHARS",
    "Feature",
    "Finding",
    "InlinePage",
    "PageSummary",
    "Trace",
    "inline_page",
    "page_data",
    "prepare_text",
    "rank_units",
    "render_page",
    "text_features",
    "trace_ids",
    "write_html",
    "write_page",
]
