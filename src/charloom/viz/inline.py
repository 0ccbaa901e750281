"""The visualiser inside a notebook: the same self-contained page, shown in a cell.

Jupyter shows an object's ``_repr_html_`` in the cell's output. The page is a whole HTML
document with its own script and styles, so it goes into an ``<iframe>`` (``srcdoc``): its
styles cannot restyle the notebook, and two pages in one notebook cannot see each other.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..charmodel import CharModel
from .page import page_data, render_page, write_html

#: The height of the frame a page is shown in (pixels); the page scrolls inside it.
FRAME_HEIGHT = 820


@dataclass
class InlinePage:
    """One visualiser page, shown inline by Jupyter; :meth:`save` writes it to a file."""

    html: str = field(repr=False)  # the self-contained page, as `charloom viz` writes it
    chars: int  # model steps shown
    truncated: bool
    units: int  # unit traces embedded
    mean_bits: float  # mean surprisal, bits per predicted character
    predicted: int  # characters predicted (all but the first)
    skipped: int = 0  # unknown characters left out (unknown="skip")
    height: int = FRAME_HEIGHT

    def _repr_html_(self) -> str:
        page = html.escape(self.html, quote=True)
        return (
            f'<iframe srcdoc="{page}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {self.height}px; border: 1px solid #ccc;"></iframe>'
        )

    def save(self, out: str | os.PathLike) -> Path:
        """Write the page to ``out`` (atomically) and return its path."""
        return write_html(self.html, out)


def inline_page(model: CharModel, text: str, **options) -> InlinePage:
    """The page for ``model`` reading ``text``; ``options`` as for
    :func:`charloom.viz.page_data` (``layer``, ``state``, ``unit``, ``start``, ``max_chars``,
    ``unknown``, ``title``)."""
    data = page_data(model, text, **options)
    return InlinePage(
        html=render_page(data),
        chars=data["text"]["steps"],
        truncated=data["text"]["truncated"],
        units=sum(len(s["units"]) for s in data["states"]),
        mean_bits=data["mean_bits"],
        predicted=data["predicted"],
        skipped=data["text"]["skipped"],
    )
