"""bench/train_base.py's reading of the Python documentation's reStructuredText sources."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
train_base = pytest.importorskip("train_base")

SOURCE = """\
.. _tut-if:

:keyword:`!if` Statements
=========================

.. index::
   statement: if
   single: else

Perhaps the most well-known statement is :keyword:`if`; see :ref:`the tutorial <tut-for>`
and :func:`~os.path.join`.  Use ``x < 0`` to test.

.. function:: len(s)
   :noindex:

   Return the length of an object.

.. A comment that spans
   two lines.

   >>> len("abc")
   3
"""


def test_rst_text_keeps_the_prose_and_drops_the_markup():
    text = train_base.rst_text(SOURCE)
    assert text.splitlines()[0] == "if Statements"
    assert "Perhaps the most well-known statement is if; see the tutorial" in text
    assert "and os.path.join.  Use x < 0 to test." in text
    assert "len(s)" in text and "Return the length of an object." in text
    for markup in ("===", ".. ", ":keyword:", "``", "statement: if", ":noindex:", "comment"):
        assert markup not in text, markup
    assert '   >>> len("abc")' not in text  # inside the comment's block: dropped with it
    assert text.endswith("\n") and "\n\n\n" not in text


def test_python_docs_text_leaves_out_the_change_log(tmp_path):
    (tmp_path / "whatsnew").mkdir()
    (tmp_path / "whatsnew" / "changelog.rst.txt").write_text("bpo-12345: fixed\n")
    (tmp_path / "tutorial").mkdir()
    (tmp_path / "tutorial" / "intro.rst.txt").write_text("Intro\n=====\n\nHello.\n")
    assert train_base.python_docs_text(tmp_path) == "Intro\n\nHello.\n"
    with pytest.raises(SystemExit, match="no documentation sources"):
        train_base.python_docs_text(tmp_path / "tutorial" / "missing")
