"""Simple features of a text, and the hidden units that follow them.

A feature gives every character a number describing where the model stands *after reading it*,
the same moment the hidden state is taken: the opening quote is already "inside quotes", the
closing one is not; a newline is at column 0. The features are deliberately plain - the kind of
thing char-rnn's famous units were found to track (Karpathy, Johnson and Fei-Fei, "Visualizing
and Understanding Recurrent Networks", 2015).

A unit is "interesting" when its activation along the text correlates strongly (Pearson's r)
with one of these features, or when it varies a lot. :func:`rank_units` finds, for each feature
present in the text, the units that follow it best, and for each state the most variable units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = set(_OPEN.values())

#: Binary features need at least this many characters on each side to be worth correlating.
MIN_COUNT = 5
#: A unit follows a feature when |r| reaches this; weaker correlations are not listed.
MIN_R = 0.2


@dataclass
class Feature:
    key: str  # short name, used in the page's data
    label: str  # what a reader sees
    values: np.ndarray  # (N,) float64, one value per character


def _inside_double_quotes(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    inside = False
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        elif ch == "\u201c":
            inside = True
        elif ch == "\u201d":
            inside = False
        out[i] = inside
    return out


def _inside_single_quotes(text: str) -> np.ndarray:
    # An apostrophe between letters (don't, it's) is not a quote. A quote opens after a
    # non-word character and closes before one; a line ends any quote left open.
    out = np.zeros(len(text))
    inside = False
    n = len(text)
    for i, ch in enumerate(text):
        if ch == "\n":
            inside = False
        elif ch in "'\u2018\u2019":
            before = text[i - 1] if i else " "
            after = text[i + 1] if i + 1 < n else " "
            if not inside and not before.isalnum() and ch != "\u2019":
                inside = True
            elif inside and not after.isalnum() and ch != "\u2018":
                inside = False
        out[i] = inside
    return out


def _inside_brackets(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    depth = 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        out[i] = depth > 0
    return out


def _column(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    col = 0
    for i, ch in enumerate(text):
        col = 0 if ch == "\n" else col + 1
        out[i] = col
    return out


def _indentation(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    leading = True
    for i, ch in enumerate(text):
        if ch == "\n":
            leading = True
            continue
        leading = leading and ch in " \t"
        out[i] = leading
    return out


def _comment(text: str) -> np.ndarray:
    # From a '#' outside quotes to the end of the line (Python, shell, TOML, ...).
    out = np.zeros(len(text))
    inside = False
    quote = ""
    for i, ch in enumerate(text):
        if ch == "\n":
            inside, quote = False, ""
        elif not inside:
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                inside = True
        out[i] = inside
    return out


def _word_position(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    run = 0
    for i, ch in enumerate(text):
        run = run + 1 if ch.isalnum() or ch == "_" else 0
        out[i] = run
    return out


def text_features(text: str) -> list[Feature]:
    """Every feature, one value per character of ``text`` (constant ones included)."""

    def each(pred) -> np.ndarray:
        return np.fromiter((bool(pred(c)) for c in text), dtype=np.float64, count=len(text))

    return [
        Feature("dquote", 'inside "double quotes"', _inside_double_quotes(text)),
        Feature("squote", "inside 'single quotes'", _inside_single_quotes(text)),
        Feature("bracket", "inside (brackets)", _inside_brackets(text)),
        Feature("column", "position in the line", _column(text)),
        Feature("newline", "just after a newline", each(lambda c: c == "\n")),
        Feature("space", "just after a space", each(lambda c: c in " \t")),
        Feature("word", "position in a word", _word_position(text)),
        Feature("digit", "in a number", each(str.isdigit)),
        Feature("upper", "on a capital letter", each(str.isupper)),
        Feature("punct", "after . , ; : ! or ?", each(lambda c: c in ".,;:!?")),
        Feature("indent", "in a line's indentation", _indentation(text)),
        Feature("comment", "inside a # comment", _comment(text)),
    ]


def usable(feature: Feature) -> bool:
    """Whether ``feature`` varies enough along the text to correlate units with it."""
    v = feature.values
    if np.all(v == v[0]):
        return False
    if set(np.unique(v)) <= {0.0, 1.0}:
        on = int(v.sum())
        return on >= MIN_COUNT and len(v) - on >= MIN_COUNT
    return True


def correlations(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Pearson's r of every unit ``acts (N, U)`` with every feature ``feats (N, M)``: ``(U, M)``.

    A constant unit or feature correlates 0 with everything."""
    a = acts - acts.mean(axis=0)
    f = feats - feats.mean(axis=0)
    na = np.sqrt((a * a).sum(axis=0))
    nf = np.sqrt((f * f).sum(axis=0))
    r = a.T @ f
    with np.errstate(divide="ignore", invalid="ignore"):
        r = r / np.outer(na, nf)
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0).clip(-1.0, 1.0)


@dataclass
class UnitStats:
    """Per-unit summary for one state: best feature, its r, and the activation's spread."""

    best: np.ndarray  # (U,) index into the usable features, -1 when there are none
    r: np.ndarray  # (U,) Pearson's r with that feature
    std: np.ndarray  # (U,)


@dataclass
class Finding:
    """One entry of the ranking: a unit of a state and why it is interesting."""

    state: str  # the state's key, e.g. "c1"
    unit: int
    label: str  # e.g. 'inside "double quotes"' or "most variable"
    score: float  # |r| for a feature, the standard deviation for "most variable"
    r: float | None  # signed correlation; None for "most variable"
    feature: str | None  # feature key; None for "most variable"


def _feature_matrix(features: Sequence[Feature]) -> np.ndarray:
    return np.stack([f.values for f in features], axis=1)


def _unit_stats(acts: np.ndarray, r: np.ndarray | None) -> UnitStats:
    n_units = acts.shape[1]
    std = acts.std(axis=0)
    if r is None:
        return UnitStats(np.full(n_units, -1), np.zeros(n_units), std)
    best = np.abs(r).argmax(axis=1)
    return UnitStats(best, r[np.arange(n_units), best], std)


def rank_units(
    states: dict[str, np.ndarray],
    features: Sequence[Feature],
    per_feature: int = 2,
    per_state_variable: int = 2,
) -> tuple[list[Finding], dict[str, UnitStats], list[Feature]]:
    """The interesting units of ``states`` (key -> activations ``(N, U)``).

    For each usable feature, up to ``per_feature`` units (over all states) whose activation
    correlates most strongly with it (``|r| >= MIN_R``), strongest first, each unit listed once;
    then, for each state, its ``per_state_variable`` units with the largest standard deviation
    among those not listed yet. Returns the findings, each state's :class:`UnitStats` and the
    usable features (the ones ``UnitStats.best`` indexes).
    """
    feats = [f for f in features if usable(f)]
    fmat = _feature_matrix(feats) if feats else None
    mats = {
        key: None if fmat is None else correlations(acts.astype(np.float64), fmat)
        for key, acts in states.items()
    }
    stats = {key: _unit_stats(acts, mats[key]) for key, acts in states.items()}
    taken: set[tuple[str, int]] = set()
    by_feature: list[Finding] = []
    # Greedy over every (unit, feature) pair, strongest first: a unit is listed once, and a
    # feature keeps at most ``per_feature`` units.
    cands = [
        (abs(float(r[u, j])), j, key, u)
        for key, r in mats.items()
        if r is not None
        for u in range(r.shape[0])
        for j in range(r.shape[1])
    ]
    cands.sort(key=lambda c: (-c[0], c[1], c[2], c[3]))
    count = [0] * len(feats)
    for score, j, key, u in cands:
        if score < MIN_R:
            break
        if count[j] == per_feature or (key, u) in taken:
            continue
        taken.add((key, u))
        count[j] += 1
        feat = feats[j]
        r = mats[key]
        assert r is not None  # cands holds only states whose correlations were computed
        by_feature.append(Finding(key, u, feat.label, score, float(r[u, j]), feat.key))
    by_feature.sort(key=lambda f: -f.score)
    variable: list[Finding] = []
    for key, st in stats.items():
        picked = 0
        for u in np.argsort(-st.std, kind="stable"):
            if picked == per_state_variable:
                break
            if (key, int(u)) in taken or st.std[u] == 0:
                continue
            taken.add((key, int(u)))
            variable.append(Finding(key, int(u), "most variable", float(st.std[u]), None, None))
            picked += 1
    return by_feature + variable, stats, feats
