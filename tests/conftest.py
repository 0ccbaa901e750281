"""Shared fixtures: tiny texts and tiny models, so the whole suite runs in a few minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Then the cat sat on the mat and thought about fish.",
    "This is a small text for testing a character model.",
    'They said: "the rain in Spain stays mainly in the plain".',
    "There were (many) lines, with numbers like 12, 345 and 6789.",
]


def make_text(n_lines: int = 200) -> str:
    """A few KB of repetitive English with quotes, brackets and digits."""
    return "\n".join(_SENTENCES[i % len(_SENTENCES)] for i in range(n_lines)) + "\n"


@pytest.fixture(scope="session", autouse=True)
def compiled_engine_ready() -> None:
    """Load (or, with a cold numba cache as in CI, compile) the generation kernels once, before
    any test: otherwise the first sample starts a background compile that runs on through the
    following tests, whose timings and output capture it then disturbs (seen in CI: a later
    test's capsys missed its output while the compile was running)."""
    from charloom import fastgen

    fastgen.prepare(wait=True)


@pytest.fixture(scope="session")
def small_text() -> str:
    return make_text()


@pytest.fixture
def text_file(tmp_path: Path, small_text: str) -> Path:
    p = tmp_path / "small.txt"
    p.write_text(small_text, encoding="utf-8")
    return p


#: Command-line flags for a model small and quick enough for CLI tests.
TINY_FLAGS = [
    "--preset",
    "tiny",
    "--hidden",
    "32",
    "--embed",
    "16",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
]


def tiny_overrides(**kw) -> dict:
    """Settings for a model small and quick enough for unit tests."""
    base = dict(
        layers=1,
        hidden=32,
        embed=16,
        dropout=0.0,
        batch_size=4,
        seq_len=16,
        iters=10,
        eval_every=5,
        log_every=5,
        sample_every=1000,
        warmup=2,
        sample_length=20,
    )
    base.update(kw)
    return base
