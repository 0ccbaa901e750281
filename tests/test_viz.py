"""The visualiser page: built for every model kind, its numbers equal ``charloom eval``'s, its
units found, its bad inputs refused; and a real (headless) browser opens it."""

from __future__ import annotations

import html as html_lib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import charloom
from charloom.commands import main
from charloom.viz import page as page_mod
from charloom.viz import page_data, rank_units, render_page, text_features, trace_ids, write_page

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KINDS = ("lstm", "gru", "rnn", "seed")


def _text(n_lines: int = 160) -> str:
    from conftest import make_text

    return make_text(n_lines)


def _train(kind: str, out: Path, text: str) -> Path:
    if kind == "seed":
        config = charloom.preset_config("seed", iters=2, log_every=1, sample_every=1000)
    elif kind == "bytes":
        config = _tiny("lstm", vocab="bytes", layers=1, iters=4, eval_every=1000)
    else:
        config = _tiny(kind)
    charloom.train(config, text=text, out=out, console=False)
    return out


def _tiny(kind: str, **kw):
    settings = dict(
        iters=10,
        hidden=32,
        embed=16,
        layers=2,
        seq_len=16,
        batch_size=4,
        eval_every=5,
        log_every=5,
        sample_every=1000,
        kind=kind,
    )
    settings.update(kw)
    return charloom.preset_config("tiny", **settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viz-runs")
    text = _text()
    return {kind: _train(kind, root / kind, text) for kind in KINDS}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("viz-text") / "text.txt"
    # Longer than a page, so the page is truncated; quotes, brackets and digits included.
    p.write_text(_text(120), encoding="utf-8")
    return p


def page_json(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="charloom-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))


@pytest.mark.parametrize("kind", KINDS)
def test_page_for_each_model_kind_matches_eval(runs, kind, tmp_path):
    text = _text(120)
    out = tmp_path / "page.html"
    summary = write_page(runs[kind], text, out, max_chars=1500)
    html = out.read_text(encoding="utf-8")
    data = page_json(html)
    model = charloom.load(runs[kind])

    # The page shows the first 1500 characters, as the model reads them.
    shown = model.normalise(text)[:1500]
    assert "".join(data["labels"]) == shown
    assert data["text"] == {
        "total": len(model.normalise(text)),
        "shown": 1500,
        "start": 0,
        "steps": 1500,
        "truncated": True,
        "skipped": 0,
    }
    assert summary.truncated and summary.chars == 1500

    # Mean surprisal, as stated and as the mean of the per-character strip, equals eval's bpc.
    ev = model.evaluate(shown)
    surprisal = [s for s in data["surprisal"] if s is not None]
    assert data["surprisal"][0] is None and len(surprisal) == ev.chars == data["predicted"]
    assert data["mean_bits"] == pytest.approx(ev.bpc, abs=1e-4)
    assert sum(surprisal) / len(surprisal) == pytest.approx(ev.bpc, abs=1e-4)

    # Every state of every layer, each with its units; LSTMs have cell states too.
    cfg = model.config
    kinds = ("h", "c") if cfg.kind == "lstm" else ("h",)
    assert [s["key"] for s in data["states"]] == [
        f"{k}{layer}" for layer in range(1, cfg.layers + 1) for k in kinds
    ]
    assert all(s["units"] == list(range(cfg.hidden)) for s in data["states"])

    # Top-5 predictions: valid ids, probabilities in decreasing order.
    k = data["top_k"]
    assert k == 5
    probs = np.array(data["top_probs"]).reshape(-1, k)
    ids = np.array(data["top_ids"]).reshape(-1, k)
    assert probs.shape[0] == 1500 and (np.diff(probs, axis=1) <= 1e-4).all()
    assert (probs.sum(axis=1) <= 1 + 1e-3).all() and ids.max() < model.vocab.size

    # A ranking with labels and scores, pointing at embedded units.
    assert data["findings"]
    for f in data["findings"]:
        assert f["label"] and f["score"] > 0
        state = next(s for s in data["states"] if s["key"] == f["state"])
        assert f["unit"] in state["units"]

    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", html)


def test_trace_agrees_with_the_fused_model(runs):
    for kind in ("lstm", "gru", "rnn"):
        m = charloom.load(runs[kind])
        ids = m.vocab.encode(_text(10)[:300])
        trace = trace_ids(m.model, ids)
        with torch.no_grad():
            x = torch.from_numpy(ids.astype(np.int64))[None]
            out, _ = m.model.rnn(m.model.embedding(x))
            logp = torch.log_softmax(m.model.head(out)[0], dim=-1)
        top = trace.states[(m.config.layers, "h")]
        np.testing.assert_allclose(top, out[0].numpy(), atol=1e-5)
        want = -logp[:-1].gather(1, x[0, 1:, None])[:, 0] / math.log(2)
        np.testing.assert_allclose(trace.surprisal[1:], want.numpy(), atol=1e-4)
        if kind == "lstm":  # h = o * tanh(c): |h| <= |tanh(c)|
            c = trace.states[(1, "c")]
            assert (np.abs(trace.states[(1, "h")]) <= np.abs(np.tanh(c)) + 1e-6).all()


def test_cli_viz_and_eval_report_the_same_bits(runs, tmp_path, capsys):
    text = _text(50)
    src = tmp_path / "held-out.txt"
    src.write_text(text, encoding="utf-8")
    assert len(text) < 3000  # the whole text fits on the page
    out = tmp_path / "page.html"
    assert main(["viz", str(runs["lstm"]), str(src), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert main(["eval", str(runs["lstm"]), str(src), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    data = page_json(out.read_text(encoding="utf-8"))
    assert not data["text"]["truncated"]
    assert data["mean_bits"] == pytest.approx(ev["bpc"], abs=1e-4)
    assert f"{ev['bpc']:.4f}" in said


def test_layer_state_and_unit_choose_what_is_embedded(runs):
    m = charloom.load(runs["lstm"])
    data = page_data(m, _text(20), layer=2, state="c", unit=7)
    assert [s["key"] for s in data["states"]] == ["c2"]
    assert data["initial"] == {"state": "c2", "unit": 7}
    assert all(f["state"] == "c2" for f in data["findings"])


def test_a_large_model_keeps_its_most_interesting_units(runs, monkeypatch):
    m = charloom.load(runs["lstm"])
    monkeypatch.setattr(page_mod, "TRACE_BUDGET", 500 * 4 * 6)  # 500 chars x 6 units per state
    data = page_data(m, _text(20), max_chars=500, unit=31, state="h", layer=1)
    (state,) = data["states"]
    ranked = {f["unit"] for f in data["findings"]}
    assert 6 <= len(state["units"]) < m.config.hidden
    assert ranked <= set(state["units"]) and 31 in state["units"]
    assert len(data["acts"]) == math.ceil(500 * len(state["units"]) / 3) * 4  # base64 of bytes


def test_bytes_vocabulary_page(tmp_path):
    text = 'Caf\u00e9 \u00e0 la cr\u00e8me, "d\u00e9j\u00e0 vu" (\u00e9t\u00e9).\n' * 40
    run = _train("bytes", tmp_path / "bytes", text)
    m = charloom.load(run)
    data = page_data(m, text, max_chars=400)
    steps = data["text"]["steps"]
    assert steps <= 400 and len(data["labels"]) == steps
    shown = text[: data["text"]["shown"]]
    assert len(shown.encode("utf-8")) == steps and "".join(data["labels"]) == shown
    assert data["labels"][3] == "\u00e9" and data["labels"][4] == ""  # one character, two steps
    assert data["mean_bits"] == pytest.approx(m.evaluate(shown).bpc, abs=1e-4)


def test_features_follow_the_text():
    text = "a \"bc\" (d) 'e' it's\n  # x\nz"
    f = {feat.key: feat.values for feat in text_features(text)}
    assert "".join(c for c, v in zip(text, f["dquote"]) if v) == '"bc'
    assert "".join(c for c, v in zip(text, f["bracket"]) if v) == "(d"
    assert "".join(c for c, v in zip(text, f["squote"]) if v) == "'e"
    assert "".join(c for c, v in zip(text, f["comment"]) if v) == "# x"
    assert "".join(c for c, v in zip(text, f["indent"]) if v) == "  "
    assert f["column"][text.index("\n")] == 0 and f["column"][text.index("\n") + 1] == 1


def test_a_quote_unit_is_found_and_labelled():
    text = _text(40)
    quote = next(f for f in text_features(text) if f.key == "dquote").values
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(len(text), 16)).astype(np.float32) * 0.3
    acts[:, 5] += 2 * quote  # unit 5 switches on inside quotes
    findings, stats, usable = rank_units({"c1": acts}, text_features(text))
    first = findings[0]
    assert (first.state, first.unit, first.feature) == ("c1", 5, "dquote")
    assert first.label == 'inside "double quotes"' and first.score > 0.9 and first.r > 0
    assert usable[stats["c1"].best[5]].key == "dquote"
    assert [f.label for f in findings].count("most variable") == 2


def test_the_page_escapes_the_text(runs):
    m = charloom.load(runs["lstm"])
    data = page_data(m, _text(5))
    data["labels"][:9] = list("</script>")
    data["title"] = "<b>x</b>"
    html = render_page(data)
    assert html.count("</script>") == 2  # the data block's and the code's own
    assert "<b>x</b>" not in html
    assert page_json(html)["labels"][:9] == list("</script>")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "3"], "layer 3 does not exist"),
        (["--layer", "0"], "layer 0 does not exist"),
        (["--unit", "32"], "unit 32 does not exist"),
        (["--max-chars", "99999"], "max chars must be in 2..4096"),
        (["--start", "100000"], "past the end of the text"),
    ],
)
def test_bad_options_are_one_line_errors(runs, text_file, tmp_path, capsys, args, message):
    out = tmp_path / "page.html"
    assert main(["viz", str(runs["lstm"]), str(text_file), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_inputs_are_one_line_errors(runs, text_file, tmp_path, capsys):
    out = tmp_path / "page.html"

    def fails(argv: list[str], message: str) -> None:
        assert main(["viz", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("charloom: error: ") and message in err, err
        assert err.count("\n") == 1
        assert not out.exists()

    fails([str(tmp_path / "missing-run"), str(text_file)], "no such run")
    fails([str(runs["lstm"]), str(tmp_path / "missing.txt")], "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    fails([str(runs["lstm"]), str(empty)], "empty")
    odd = tmp_path / "odd.txt"
    odd.write_text("The \u20ac and the \u00a7 signs", encoding="utf-8")
    fails([str(runs["lstm"]), str(odd)], "outside the model's vocabulary: '\u00a7', '\u20ac'")
    fails([str(runs["gru"]), str(text_file), "--state", "c"], "GRU models have no cell state")
    one = tmp_path / "one.txt"
    one.write_text("T", encoding="utf-8")
    fails([str(runs["lstm"]), str(one)], "at least 2 characters")
    out = tmp_path / "no" / "page.html"
    fails([str(runs["lstm"]), str(text_file)], "the folder for")


# Plays a reader: hovers character 6, focuses it, presses the right and down arrows, clicks the
# second unit of the ranking and switches to colouring by surprisal; records what it saw.
_PROBE = """<script>
(function () {
  var seen = {}, text = document.getElementById("text");
  var heading = function () { return document.querySelector("#info h2").textContent; };
  var ch = text.querySelector('[data-i="5"]');
  ch.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
  seen.hover = heading();
  ch.focus();
  ch.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  seen.key = heading();
  seen.focused = document.activeElement.getAttribute("data-i");
  document.activeElement.dispatchEvent(
    new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
  seen.down = document.querySelector("#info p").textContent;
  var b = document.querySelectorAll("#ranking-list button")[1];
  b.click();
  seen.pressed = b.getAttribute("aria-pressed");
  seen.button = b.getAttribute("data-state") + "/" + b.getAttribute("data-unit");
  seen.chosen = document.getElementById("state-select").value + "/" +
    document.getElementById("unit-select").value;
  document.querySelector('input[value="surprisal"]').click();
  seen.legend = document.getElementById("legend-hi").textContent;
  document.body.setAttribute("data-probe", JSON.stringify(seen));
})();
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_browser_opens_the_page(runs, text_file, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium on this machine (apt-get install chromium): browser test skipped")
    out = tmp_path / "page.html"
    text = text_file.read_text(encoding="utf-8")
    write_page(runs["lstm"], text, out, max_chars=2000)
    url = out.resolve().as_uri()

    # The DOM after the page's script ran: ready, no error, the mean shown equals eval's.
    dom = _run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url).stdout
    assert 'data-ready="1"' in dom, dom[-2000:]
    assert '<div id="error" role="alert"></div>' in dom  # the page reported no error
    shown = float(re.search(r'id="mean-bits" data-value="([^"]+)"', dom).group(1))
    model = charloom.load(runs["lstm"])
    assert shown == pytest.approx(model.evaluate(model.normalise(text)[:2000]).bpc, abs=1e-4)
    assert dom.count("data-i=") == 2000
    assert "Truncated: showing 2,000 of" in dom
    assert "Top 5 predictions" in dom and 'class="barfill"' in dom

    # Hover, focus, the arrow keys, the ranking and the colour switch, driven from a script.
    probe = tmp_path / "probe.html"
    probe.write_text(
        out.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8"
    )
    dom = _run_chromium(binary, tmp_path / "profile-probe", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    seen = json.loads(html_lib.unescape(found.group(1)))
    assert seen["hover"] == "Character 6 of 2,000"
    assert seen["key"] == "Character 7 of 2,000" and seen["focused"] == "6"
    assert seen["down"].endswith("line 2, column 7")
    assert seen["pressed"] == "true" and seen["chosen"] == seen["button"]
    assert seen["legend"] == "8+ bits"

    # A screenshot for a person to look at, kept in test-artifacts/.
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "viz-page.png"
    shot.unlink(missing_ok=True)
    _run_chromium(
        binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,900", url
    )
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1200) and pixels.std() > 0.05
