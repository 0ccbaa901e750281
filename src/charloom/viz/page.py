"""The visualiser page: a model's trace over a text, its interesting units, one HTML file.

:func:`page_data` runs the model over the text (:mod:`.trace`), ranks its units against simple
text features (:mod:`.features`) and packs everything the page shows into one JSON-able dict;
:func:`render_page` pours that into ``template.html`` (inline CSS and JavaScript, nothing
fetched from anywhere); :func:`write_page` does both for a run directory and writes the file.

Activations travel compactly: each embedded unit's trace is quantised to one byte per character
(its own minimum..maximum in 255 steps) and the bytes are base64-encoded. When the model has more
units than fit in :data:`TRACE_BUDGET` bytes, each state keeps its most interesting units.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..charmodel import CharModel, load
from ..errors import CharloomError
from .features import Finding, rank_units, text_features
from .trace import STATE_NAMES, Trace, state_kinds, trace_ids

#: Characters shown by default, and at most. Below 4096 ``charloom eval`` reads the text in one
#: chunk from the zero state, so the page's mean surprisal is exactly the eval's bits per char.
DEFAULT_MAX_CHARS = 3000
MAX_CHARS = 4096
#: Bytes of quantised activations a page may embed (about 4.3 MB once base64-encoded).
TRACE_BUDGET = 3_200_000
TOP_K = 5

_DATA_MARK = "__CHARLOOM_DATA__"
_TITLE_MARK = "__CHARLOOM_TITLE__"


@dataclass
class PageText:
    """The part of a text a page shows, as the model reads it."""

    labels: list[str]  # what is drawn for each model step (a character; "" for UTF-8 tails)
    ids: np.ndarray  # (N,) the model's ids
    total: int  # characters in the whole (normalised) text
    shown: int  # characters of the text the page covers (skipped ones included)
    start: int  # first character shown
    skipped: int = 0  # characters outside the vocabulary left out (unknown="skip")


@dataclass
class PageSummary:
    """What :func:`write_page` wrote."""

    path: Path
    chars: int  # model steps shown
    truncated: bool
    units: int  # unit traces embedded
    mean_bits: float  # mean surprisal, bits per predicted character
    predicted: int  # characters predicted (all but the first)
    bytes: int  # size of the file
    skipped: int = 0  # unknown characters left out (unknown="skip")


def prepare_text(
    model: CharModel,
    text: str,
    start: int = 0,
    max_chars: int = DEFAULT_MAX_CHARS,
    unknown: str = "error",
) -> PageText:
    """Normalise ``text`` as the model expects, skip ``start`` characters, keep ``max_chars``
    model steps, and encode them. Characters outside the vocabulary are a
    :class:`CharloomError` (``unknown="error"``), or are left out of the text
    (``unknown="skip"``, as :meth:`CharModel.evaluate` does; the page shows the text without
    them and says how many there were)."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int):
        raise CharloomError(f"max chars must be an integer, not {max_chars!r}")
    if not 2 <= max_chars <= MAX_CHARS:
        raise CharloomError(f"max chars must be in 2..{MAX_CHARS}, not {max_chars}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise CharloomError(f"start must be a non-negative integer, not {start!r}")
    if not text:
        raise CharloomError("the text is empty")
    norm = model.normalise(text)
    if start >= len(norm):
        raise CharloomError(f"start {start} is past the end of the text ({len(norm)} chars)")
    rest, skipped = _known_part(model, norm[start:], max_chars, unknown)
    if model.vocab.kind == "bytes":
        # One model step per UTF-8 byte: keep whole characters that fit in max_chars bytes.
        labels: list[str] = []
        shown = 0
        for ch in rest:
            n = len(ch.encode("utf-8", errors="surrogatepass"))
            if len(labels) + n > max_chars:
                break
            labels.extend([ch] + [""] * (n - 1))
            shown += 1
        part = rest[:shown]
    else:
        part = rest[:max_chars]
        shown = len(part)
        labels = list(part)
    ids = model.vocab.encode(part, what="text")
    if len(ids) < 2:
        raise CharloomError("the text is too short: the page needs at least 2 characters")
    return PageText(
        labels=labels,
        ids=np.asarray(ids),
        total=len(norm),
        shown=shown + skipped,
        start=start,
        skipped=skipped,
    )


def _known_part(model: CharModel, rest: str, max_chars: int, unknown: str) -> tuple[str, int]:
    """The text from the start on that the page reads, and how many unknown characters were
    left out of the part it covers (the first ``max_chars`` known ones)."""
    if unknown == "error":
        model.vocab.check(rest[:max_chars], what="text", advice="--unknown skip leaves them out")
        return rest, 0
    if unknown != "skip":
        raise CharloomError(f"unknown must be error or skip, not {unknown!r}")
    bad = set(model.vocab.unknown(rest))
    if not bad:
        return rest, 0
    known, skipped = model.vocab.known_only(rest)
    if len(known) <= max_chars:  # the page covers the rest of the text
        return known, skipped
    # Unknown characters among those the page covers: up to the last character it keeps.
    covered, seen = 0, 0
    while seen < max_chars:
        seen += rest[covered] not in bad
        covered += 1
    return known[:max_chars], covered - max_chars


def _state_key(layer: int, kind: str) -> str:
    return f"{kind}{layer}"


def _vocab_labels(model: CharModel) -> list[str]:
    if model.vocab.kind == "bytes":
        return [chr(b) if 32 <= b < 127 or b in (9, 10) else f"\\x{b:02x}" for b in range(256)]
    return list(model.vocab.chars)


def _quantise(acts: np.ndarray) -> tuple[bytes, float, float]:
    lo, hi = float(acts.min()), float(acts.max())
    q = np.rint((acts - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(acts)
    return q.astype(np.uint8).tobytes(), lo, hi


def _choose_units(
    n_units: int, quota: int, findings: list[Finding], key: str, best_r: np.ndarray, forced: int
) -> list[int]:
    """The units of state ``key`` to embed: all that fit; else the ranked ones, the forced one,
    then the strongest correlations."""
    if quota >= n_units:
        return list(range(n_units))
    chosen: list[int] = []
    first = [f.unit for f in findings if f.state == key] + ([forced] if forced >= 0 else [])
    for u in first + [int(u) for u in np.argsort(-np.abs(best_r), kind="stable")]:
        if u not in chosen:
            chosen.append(u)
    keep = max(quota, len(first))
    return sorted(chosen[:keep])


def _finite(x) -> float | None:
    """``x`` if it is a finite number (config.json is read, not trusted), else None."""
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return x if ok else None


def _round(values, digits: int) -> list:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def page_data(
    model: CharModel,
    text: str,
    *,
    layer: int | None = None,
    state: str | None = None,
    unit: int | None = None,
    start: int = 0,
    max_chars: int = DEFAULT_MAX_CHARS,
    unknown: str = "error",
    title: str = "",
) -> dict:
    """Everything the page shows, as a JSON-able dict.

    ``layer`` (1-based) and ``state`` (``h``, or ``c`` for an LSTM) restrict the states embedded
    to one layer and/or kind, and ``unit`` (0-based) is the unit shown first; by default every
    state is embedded and the page opens on the top-ranked unit. ``unknown``: see
    :func:`prepare_text`.
    """
    cfg = model.config
    kinds = state_kinds(cfg.kind)
    if layer is not None and (
        isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= cfg.layers
    ):
        raise CharloomError(
            f"layer {layer!r} does not exist: the model has {cfg.layers} layer(s), "
            f"numbered 1..{cfg.layers}"
        )
    if state is not None and state not in kinds:
        extra = "" if cfg.kind == "lstm" else f" ({cfg.kind.upper()} models have no cell state)"
        raise CharloomError(
            f"unknown state {state!r}: choose {' or '.join(repr(k) for k in kinds)}{extra}"
        )
    if unit is not None and (
        isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < cfg.hidden
    ):
        raise CharloomError(
            f"unit {unit!r} does not exist: the layers have {cfg.hidden} units, "
            f"numbered 0..{cfg.hidden - 1}"
        )
    pt = prepare_text(model, text, start=start, max_chars=max_chars, unknown=unknown)
    trace: Trace = trace_ids(model.model, pt.ids, top_k=TOP_K)
    n = len(pt.ids)

    layers = [layer] if layer is not None else list(range(1, cfg.layers + 1))
    wanted = [state] if state is not None else list(kinds)
    keys = [(lay, kind) for lay in layers for kind in wanted]
    acts = {_state_key(lay, kind): trace.states[(lay, kind)] for lay, kind in keys}

    # Features of the shown characters; in bytes mode each byte gets its character's values.
    feats = text_features("".join(lab if lab else "\x00" for lab in pt.labels))
    findings, stats, usable = rank_units(acts, feats)

    initial_key = _state_key(*keys[0])
    if unit is None and findings:
        initial_key, initial_unit = findings[0].state, findings[0].unit
    else:
        initial_unit = unit if unit is not None else 0
    quota = max(1, TRACE_BUDGET // (n * len(keys)))
    blobs: list[bytes] = []
    states: list[dict[str, Any]] = []
    for lay, kind in keys:
        key = _state_key(lay, kind)
        st = stats[key]
        forced = initial_unit if key == initial_key else -1
        units = _choose_units(cfg.hidden, quota, findings, key, st.r, forced)
        lo, hi, notes = [], [], []
        for u in units:
            blob, a, b = _quantise(acts[key][:, u])
            blobs.append(blob)
            lo.append(a)
            hi.append(b)
            best = int(st.best[u])
            note = f"std {st.std[u]:.3f}"
            if best >= 0 and abs(st.r[u]) >= 0.3:
                note = f"{usable[best].label}, r {st.r[u]:+.2f}; " + note
            notes.append(note)
        states.append(
            {
                "key": key,
                "layer": lay,
                "kind": kind,
                "label": f"layer {lay} {STATE_NAMES[kind]} ({kind})",
                "row0": sum(len(s["units"]) for s in states),
                "units": units,
                "lo": _round(lo, 6),
                "hi": _round(hi, 6),
                "notes": notes,
            }
        )
    if initial_unit not in next(s for s in states if s["key"] == initial_key)["units"]:
        initial_unit = next(s for s in states if s["key"] == initial_key)["units"][0]

    tr = model.training
    return {
        "version": __version__,
        "title": title or str(model.path),
        "model": {
            "kind": cfg.kind,
            "layers": cfg.layers,
            "hidden": cfg.hidden,
            "embed": cfg.embed,
            "vocab": model.vocab.kind,
            "vocab_size": model.vocab.size,
            "ascii": model.ascii,
            "iterations": _finite(tr.get("iterations")),
            "best_val_loss": _finite(tr.get("best_val_loss")),
            "checkpoint": str(model.path),
        },
        "text": {
            "total": pt.total,
            "shown": pt.shown,
            "start": pt.start,
            "steps": n,
            "truncated": pt.start + pt.shown < pt.total,
            "skipped": pt.skipped,
        },
        "labels": pt.labels,
        "ids": pt.ids.tolist(),
        "vocab": _vocab_labels(model),
        "top_ids": trace.top_ids.reshape(-1).tolist(),
        "top_probs": _round(trace.top_probs.reshape(-1), 4),
        "top_k": int(trace.top_ids.shape[1]),
        "surprisal": _round(trace.surprisal, 5),
        "mean_bits": trace.mean_bits,
        "predicted": n - 1,
        "states": states,
        "acts": base64.b64encode(b"".join(blobs)).decode("ascii"),
        "units_total": cfg.hidden,
        "findings": [
            {
                "state": f.state,
                "unit": f.unit,
                "label": f.label,
                "score": round(f.score, 4),
                "r": None if f.r is None else round(f.r, 4),
                "feature": f.feature,
            }
            for f in findings
        ],
        "initial": {"state": initial_key, "unit": initial_unit},
    }


def _template() -> str:
    return resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The self-contained HTML page for ``data`` (from :func:`page_data`)."""
    # ensure_ascii keeps the page ASCII; escaping '<' keeps '</script>' in a text harmless.
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    payload = payload.replace("<", "\\u003c")
    title = html.escape(f"charloom viz: {data.get('title', '')}")
    return _template().replace(_TITLE_MARK, title).replace(_DATA_MARK, payload)


def write_page(
    run: str | os.PathLike,
    text: str,
    out: str | os.PathLike,
    *,
    which: str = "best",
    device: str = "cpu",
    **options,
) -> PageSummary:
    """Load ``run``, build the page for ``text`` (see :func:`page_data` for ``options``) and
    write it to ``out`` (atomically)."""
    model = load(run, which=which, device=device)
    options.setdefault("title", str(run))
    data = page_data(model, text, **options)
    page = render_page(data)
    out = write_html(page, out)
    return PageSummary(
        path=out,
        chars=data["text"]["steps"],
        truncated=data["text"]["truncated"],
        units=sum(len(s["units"]) for s in data["states"]),
        mean_bits=data["mean_bits"],
        predicted=data["predicted"],
        bytes=len(page.encode("utf-8")),
        skipped=data["text"]["skipped"],
    )


def write_html(page: str, out: str | os.PathLike) -> Path:
    """Write the HTML ``page`` to file ``out`` atomically (a reader never sees half a page)."""
    out = Path(out)
    if out.is_dir():
        raise CharloomError(f"{str(out)!r} is a folder; give a file name such as page.html")
    if not out.parent.is_dir():
        raise CharloomError(f"the folder for {str(out)!r} does not exist")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CharloomError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    return out
