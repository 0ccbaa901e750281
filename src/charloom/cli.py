"""The ``charloom`` command: argument parsing and error reporting only.

Every subcommand calls the Python API; a :class:`CharloomError` becomes one line,
``charloom: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields

from ._version import __version__
from .errors import CharloomError, TrainingInterrupted

# Flags of ``train`` that map one-to-one onto TrainConfig / ModelConfig fields (dest == field).
_MODEL_FLAGS = ("kind", "layers", "hidden", "embed", "dropout")
# Flags that fix the model's size or its training speed; with none of them, --time sizes the model.
_SIZE_FLAGS = {
    "kind", "layers", "hidden", "embed", "dropout", "batch_size", "seq_len", "lr", "precision",
    "path", "batching",
}
# Settings that a resumed run may change; everything else is fixed by the run.
_RESUMABLE = {
    "iters",
    "time",
    "eval_every",
    "sample_every",
    "log_every",
    "checkpoint_every",
    "device",
    "threads",
    "sample_prime",
    "sample_length",
    "sample_temperature",
    "tensorboard",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, no usage dump
        raise CharloomError(f"{message} (see: {self.prog} --help)")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, not {value}")
        return value

    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _clip(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0 (or 'none' for no clipping)")
    return value


def _duration(text: str) -> float:
    from .config import parse_duration

    try:
        return parse_duration(text)
    except CharloomError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _every(text: str) -> tuple[str, float]:
    """``--checkpoint-every``: a number of iterations, or a duration such as ``10m``."""
    if text.strip().isdigit():
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return ("iters", n)
    return ("seconds", _duration(text))


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus", metavar="NAME", help="a built-in corpus instead of files (python-docs)"
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")
    p.add_argument(
        "--errors",
        default="strict",
        choices=("strict", "replace", "ignore"),
        help="what to do with undecodable bytes (default: strict, stop with an error)",
    )


def _build_parser() -> argparse.ArgumentParser:
    from .config import DEVICES, OPTIMIZERS, PRECISIONS, SCHEDULES
    from .model import MODEL_KINDS, PATHS
    from .presets import preset_names
    from .vocab import VOCAB_KINDS

    parser = _Parser(
        prog="charloom",
        description="Character-level recurrent language models: train, sample, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"charloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    S = argparse.SUPPRESS

    # --- train --------------------------------------------------------------------------
    t = sub.add_parser(
        "train",
        help="train a model on text",
        description=(
            "Train a character model. TEXT: files, folders or glob patterns (default: the built-in "
            "python-docs corpus). Flags override the preset."
        ),
    )
    t.add_argument("text", nargs="*", metavar="TEXT")
    _text_args(t)
    t.add_argument("--preset", help=f"named settings: {', '.join(preset_names())} (default small)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    t.add_argument("--name", help="run name for the default run directory")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    t.add_argument("--vocab", choices=VOCAB_KINDS, default=S)
    t.add_argument(
        "--ascii",
        action="store_true",
        default=S,
        help="normalise text to ASCII (unidecode, collapse runs of spaces)",
    )
    t.add_argument("--model", dest="kind", choices=MODEL_KINDS, default=S)
    t.add_argument("--layers", type=_int_at_least(1), default=S)
    t.add_argument("--hidden", type=_int_at_least(1), default=S)
    t.add_argument("--embed", type=_int_at_least(1), default=S)
    t.add_argument("--dropout", type=_finite_float, default=S)
    t.add_argument(
        "--path",
        choices=PATHS,
        default=S,
        help="fused nn.LSTM/GRU/RNN (fast) or the per-step cell loop (the lecture's)",
    )
    t.add_argument("--batching", choices=("stream", "portions"), default=S)
    t.add_argument("--batch-size", type=_int_at_least(1), default=S)
    t.add_argument("--seq-len", type=_int_at_least(1), default=S)
    t.add_argument("--val-fraction", type=_finite_float, default=S)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=S)
    t.add_argument("--lr", type=_finite_float, default=S)
    t.add_argument("--weight-decay", type=_finite_float, default=S)
    t.add_argument("--grad-clip", type=_clip, default=S, help="max gradient norm, or 'none'")
    t.add_argument("--schedule", choices=SCHEDULES, default=S)
    t.add_argument("--warmup", type=_int_at_least(0), default=S)
    t.add_argument("--min-lr-ratio", type=_finite_float, default=S)
    t.add_argument("--iters", type=_int_at_least(1), default=S)
    t.add_argument("--time", type=_duration, default=S, help="wall-clock budget: 90s, 5m, 2h")
    t.add_argument("--precision", choices=PRECISIONS, default=S)
    t.add_argument("--device", choices=DEVICES, default=S)
    t.add_argument("--seed", type=_int_at_least(0), default=S)
    t.add_argument("--threads", type=_int_at_least(1), default=S)
    t.add_argument("--eval-every", type=_int_at_least(1), default=S)
    t.add_argument("--sample-every", type=_int_at_least(1), default=S)
    t.add_argument("--log-every", type=_int_at_least(1), default=S)
    t.add_argument(
        "--checkpoint-every", type=_every, default=S, metavar="N|DURATION",
        help="checkpoint every N iterations, or every DURATION (10m) (default: with each "
        "evaluation, and at least every 10 minutes)",
    )
    t.add_argument("--sample-prime", default=S)
    t.add_argument("--sample-length", type=_int_at_least(0), default=S)
    t.add_argument("--sample-temperature", type=_finite_float, default=S)
    t.add_argument("--tensorboard", action="store_true", default=S)
    t.add_argument("--quiet", action="store_true", help="no console output")
    t.add_argument("--no-bar", action="store_true", help="no progress bar")
    t.add_argument(
        "--nproc", type=_int_at_least(1), default=1, metavar="N",
        help="train with N processes on this machine (torchrun; one per GPU on CUDA)",
    )

    # --- prepare ------------------------------------------------------------------------
    pr = sub.add_parser(
        "prepare",
        help="encode text once into memory-mapped ids, for corpora larger than memory",
        description=(
            "Encode TEXT (files, folders or glob patterns) in one streaming pass into DATA/ids.bin "
            "and DATA/meta.json; then `charloom train DATA` trains from it without loading it."
        ),
    )
    pr.add_argument("text", nargs="*", metavar="TEXT")
    _text_args(pr)
    pr.add_argument("--out", metavar="DATA", required=True, help="the folder to write")
    pr.add_argument("--vocab", choices=VOCAB_KINDS, default="corpus")
    pr.add_argument(
        "--ascii", action="store_true",
        help="normalise text to ASCII (unidecode, collapse runs of spaces)",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace prepared data in DATA")
    pr.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    # --- sample -------------------------------------------------------------------------
    s = sub.add_parser("sample", help="generate text from a trained model")
    s.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    s.add_argument("--prime", default="Th", help='text to start from (default "Th")')
    s.add_argument("--length", type=int, default=200, help="new characters to generate")
    s.add_argument("--temperature", type=_finite_float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=_finite_float, default=None)
    s.add_argument("--greedy", action="store_true", help="always take the likeliest character")
    s.add_argument("--num-samples", type=_int_at_least(1), default=1)
    s.add_argument("--seed", type=_int_at_least(0), default=None, help="same seed, same text")
    s.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    s.add_argument("--device", choices=DEVICES, default="cpu")
    s.add_argument(
        "--engine", choices=("auto", "torch", "numba"), default="auto",
        help="generation loop: compiled with numba where installed (auto), or plain torch",
    )

    # --- eval ---------------------------------------------------------------------------
    e = sub.add_parser("eval", help="loss, bits per char and perplexity on a text")
    e.add_argument("run", metavar="RUN")
    e.add_argument("text", nargs="*", metavar="TEXT")
    _text_args(e)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    e.add_argument("--device", choices=DEVICES, default="auto")

    # --- bench --------------------------------------------------------------------------
    b = sub.add_parser("bench", help="measure training, generation and eval speed, and quality")
    b.add_argument("--quick", action="store_true", help="under 2 minutes; skips the 5 m run")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--data", metavar="TEXT", help="text for the quality runs (tiny shakespeare)")

    # --- info ---------------------------------------------------------------------------
    i = sub.add_parser("info", help="what a run holds: model, vocabulary, training")
    i.add_argument("run", metavar="RUN")
    i.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    i.add_argument("--json", action="store_true")

    # --- viz ----------------------------------------------------------------------------
    v = sub.add_parser(
        "viz",
        help="an HTML page showing the model's units, predictions and surprisal on a text",
        description=(
            "Write one self-contained HTML page: the text coloured by a hidden unit, the units "
            "found to follow simple text features, the top-5 next-character predictions and "
            "the surprisal of every character."
        ),
    )
    v.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    v.add_argument("text", nargs="*", metavar="TEXT", help="files, folders or glob patterns")
    _text_args(v)
    v.add_argument("--out", metavar="FILE", default="viz.html", help="the page (viz.html)")
    v.add_argument("--layer", type=int, default=None, help="only this layer (1 = the lowest)")
    v.add_argument(
        "--state", choices=("h", "c"), default=None, help="only the hidden (h) or cell (c) state"
    )
    v.add_argument("--unit", type=int, default=None, help="the unit shown first (0-based)")
    v.add_argument("--start", type=_int_at_least(0), default=0, help="skip this many characters")
    v.add_argument(
        "--max-chars", type=int, default=None, help="characters shown (3000; at most 4096)"
    )
    v.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    v.add_argument("--device", choices=DEVICES, default="cpu")

    # --- plot ---------------------------------------------------------------------------
    pl = sub.add_parser(
        "plot",
        help="draw several runs' loss curves on one figure (PNG and PDF)",
        description="Compare runs: their loss curves (and learning rates) on one figure.",
    )
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    pl.add_argument(
        "--out",
        metavar="FILE",
        default="loss-compare.png",
        help="FILE.png (a .pdf is written beside it; loss-compare.png)",
    )
    pl.add_argument(
        "--metric",
        choices=("both", "val", "train"),
        default="both",
        help="validation, training or both (default) curves",
    )
    pl.add_argument(
        "--x",
        dest="x_axis",
        choices=("iter", "time"),
        default="iter",
        help="iterations or wall-clock seconds along the x axis",
    )
    pl.add_argument("--title", default="", help="a title for the figure")

    # --- serve --------------------------------------------------------------------------
    sv = sub.add_parser(
        "serve",
        help="an HTTP generation API and a web playground (needs charloom[serve])",
        description=(
            "Serve a model: the playground at /, the API under /v1 (documented at /docs). "
            "Listens on loopback unless --host says otherwise (0.0.0.0: all interfaces)."
        ),
    )
    sv.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=_int_at_least(1), default=8000, help="port (8000)")
    sv.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    sv.add_argument("--device", choices=DEVICES, default="cpu")
    sv.add_argument("--threads", type=_int_at_least(1), default=None, help="torch threads")
    sv.add_argument("--access-log", action="store_true", help="log every request")
    from .serve.limits import ServeLimits

    bounds = ServeLimits()
    for name, text in (
        ("max_length", "new characters per sample"),
        ("max_samples", "samples per request"),
        ("max_prime", "characters of prime"),
        ("max_body", "bytes of request body"),
        ("max_active", "samples generated at once, all requests together"),
        ("max_connections", "open connections"),
    ):
        sv.add_argument(
            "--" + name.replace("_", "-"),
            type=_int_at_least(1),
            default=None,
            help=f"{text} ({getattr(bounds, name)})",
        )
    return parser


# --- commands ------------------------------------------------------------------------------
def _overrides(args: argparse.Namespace) -> dict:
    from .config import TrainConfig

    names = {f.name for f in fields(TrainConfig)} | set(_MODEL_FLAGS)
    out = {k: v for k, v in vars(args).items() if k in names}
    if "checkpoint_every" in out:
        unit, value = out.pop("checkpoint_every")
        out["checkpoint_every" if unit == "iters" else "checkpoint_every_s"] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed

    if args.nproc > 1:
        if distributed.launched():
            raise CharloomError("--nproc starts the processes itself; under torchrun leave it out")
        _check_train_args(args)
        return distributed.launch(args.nproc, _without_nproc(args.argv))
    try:
        return _train(args)
    finally:
        distributed.leave()


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (also spelled ``--nproc=N`` or abbreviated)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 3 and "--nproc".startswith(name):
            skip = "=" not in arg
        else:
            out.append(arg)
    return out


def _check_train_args(args: argparse.Namespace) -> None:
    """What a launcher can check before starting processes, so that a plain mistake is one
    error line rather than one per process."""
    from .checkpoint import find_resumable
    from .presets import preset_config

    if args.resume:
        find_resumable(args.resume)
        return
    config = preset_config(args.preset, **_overrides(args))
    config.validate()
    if config.batch_size % args.nproc:
        raise CharloomError(
            f"--batch-size {config.batch_size} must be a multiple of --nproc {args.nproc}: "
            "each process takes an equal share of every batch"
        )


def _train(args: argparse.Namespace) -> int:
    from .presets import preset_config
    from .train import load_trainer, train

    overrides = _overrides(args)
    console = not args.quiet
    if args.resume:
        fixed = sorted(set(overrides) - _RESUMABLE)
        if fixed or args.preset or args.text or args.corpus or args.out:
            bad = ", ".join("--" + f.replace("_", "-") for f in fixed) or "text/--preset/--out"
            raise CharloomError(
                f"{bad} cannot be given with --resume: a resumed run keeps its settings "
                "(only the budget and reporting can change)"
            )
        bar = not args.no_bar
        trainer = load_trainer(args.resume, overrides, console=console, progress_bar=bar)
        trainer.run()
        return 0
    config = preset_config(args.preset, **overrides)
    # --time with no preset and no size flags: charloom sizes the model for the budget.
    sized = "time" in overrides and not args.preset and not (set(overrides) & _SIZE_FLAGS)
    train(
        config,
        paths=args.text,
        corpus=args.corpus,
        encoding=args.encoding,
        errors=args.errors,
        out=args.out,
        overwrite=args.overwrite,
        name=args.name,
        console=console,
        progress_bar=not args.no_bar,
        size_for_budget=sized,
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    import time

    from .prepared import prepare

    start = time.perf_counter()
    data = prepare(
        args.text,
        args.out,
        vocab=args.vocab,
        ascii=args.ascii,
        corpus=args.corpus,
        encoding=args.encoding,
        errors=args.errors,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        seconds = time.perf_counter() - start
        size = data.source.get("bytes")
        rate = f", {size / 1e6 / seconds:.0f} MB/s" if size else ""
        print(
            f"charloom: prepared {data.length:,} ids ({data.vocab.kind} vocabulary, "
            f"{data.vocab.size} symbols, {data.dtype.name}) into {data.path} in {seconds:.1f} s"
            f"{rate}; train on it: charloom train {data.path}"
        )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .charmodel import load

    model = load(args.run, which=args.checkpoint, device=args.device)
    kwargs = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        engine=args.engine,
    )
    out = sys.stdout
    if args.num_samples == 1:
        stream = model.stream(args.prime, args.length, **kwargs)  # validates before printing
        first = next(stream, "")
        out.write(model.normalise(args.prime) + first)
        out.flush()
        for piece in stream:
            out.write(piece)
            out.flush()
        out.write("\n")
    else:
        texts = model.sample(args.prime, args.length, num_samples=args.num_samples, **kwargs)
        for n, text in enumerate(texts):
            if n:
                out.write("\n")
            out.write(text + "\n")
    out.flush()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .charmodel import load
    from .corpus import read_text

    model = load(args.run, which=args.checkpoint, device=args.device)
    text, source = read_text(args.text, args.corpus, encoding=args.encoding, errors=args.errors)
    result = model.evaluate(text)
    if result.chars == 0:
        raise CharloomError(f"the text from {source.describe()} is too short to evaluate (1 char)")
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"{source.describe()}: {result.chars:,} chars  loss {result.loss:.4f} nats/char  "
            f"{result.bpc:.4f} bits/char  perplexity {result.perplexity:.3f}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    argv = [*(["--quick"] if args.quick else []), *(["--json"] if args.json else [])]
    if args.data:
        if not os.path.isfile(args.data):
            raise CharloomError(f"no such file: {args.data!r}")
        argv += ["--data", args.data]
    return bench_main(argv)


def cmd_info(args: argparse.Namespace) -> int:
    from .charmodel import load

    m = load(args.run, which=args.checkpoint)
    cfg = m.config
    tr = m.training
    info = {
        "checkpoint": str(m.path),
        "charloom_version": m.meta.get("charloom_version"),
        "model": cfg.to_dict(),
        "parameters": m.model.num_parameters(),
        "vocab": {"kind": m.vocab.kind, "size": m.vocab.size, "ascii": m.ascii},
        "training": tr,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    chars = "".join(m.vocab.chars)
    shown = repr(chars if len(chars) <= 80 else chars[:80] + "...") if chars else "all 256 bytes"

    def num(key, default=None):
        value = tr.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if ok else default

    def fmt(x):
        return "-" if x is None else f"{x:.4f}"

    print(f"checkpoint    {m.path}")
    print(
        f"model         {cfg.kind} {cfg.layers}x{cfg.hidden}, embed {cfg.embed}, "
        f"dropout {cfg.dropout}"
    )
    print(f"parameters    {info['parameters']:,}")
    norm = " (ASCII-normalised)" if m.ascii else ""
    print(f"vocabulary    {m.vocab.kind}, {m.vocab.size} symbols{norm}: {shown}")
    print(
        f"trained       {num('iterations', 0):,} iterations, {num('chars_seen', 0):,} chars, "
        f"{num('elapsed_s', 0):.1f} s"
    )
    print(f"train loss    {fmt(num('train_loss'))} nats/char")
    best = num("best_val_loss")
    bpc = (
        f" ({best / math.log(2):.4f} bits/char, iteration {tr.get('best_iteration')})"
        if best
        else ""
    )
    print(f"best val      {fmt(best)} nats/char{bpc}")
    src = tr.get("source") if isinstance(tr.get("source"), dict) else {}
    paths = src.get("paths") if isinstance(src.get("paths"), list) else []
    print(f"text          {src.get('corpus') or ', '.join(map(str, paths)) or '-'}")
    print(f"charloom      {info['charloom_version']}")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from .corpus import read_text
    from .viz import DEFAULT_MAX_CHARS, write_page

    text, source = read_text(args.text, args.corpus, encoding=args.encoding, errors=args.errors)
    page = write_page(
        args.run,
        text,
        args.out,
        which=args.checkpoint,
        device=args.device,
        layer=args.layer,
        state=args.state,
        unit=args.unit,
        start=args.start,
        max_chars=args.max_chars if args.max_chars is not None else DEFAULT_MAX_CHARS,
    )
    cut = " (truncated)" if page.truncated else ""
    print(
        f"charloom: wrote {page.path} ({page.bytes / 1e6:.1f} MB): {page.chars:,} chars of "
        f"{source.describe()}{cut}, {page.units:,} units, mean surprisal "
        f"{page.mean_bits:.4f} bits/char"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_compare

    written = plot_compare(
        args.runs, args.out, metric=args.metric, x_axis=args.x_axis, title=args.title
    )
    print("charloom: wrote " + " and ".join(str(p) for p in written))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeLimits, serve

    bounds = ("max_length", "max_samples", "max_prime", "max_body", "max_active", "max_connections")
    given = {k: getattr(args, k) for k in bounds if getattr(args, k) is not None}
    serve(
        args.run,
        host=args.host,
        port=args.port,
        limits=ServeLimits(**given),
        checkpoint=args.checkpoint,
        device=args.device,
        threads=args.threads,
        access_log=args.access_log,
    )
    return 0


_COMMANDS = {
    "train": cmd_train,
    "prepare": cmd_prepare,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "info": cmd_info,
    "viz": cmd_viz,
    "plot": cmd_plot,
    "serve": cmd_serve,
    "bench": cmd_bench,
}


def _one_line(message: str) -> str:
    """An error message as one line: line breaks (from a file name or an argument) escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else list(argv)  # for `train --nproc`
        if not args.command:  # plain `charloom`: show what it can do
            parser.print_help()
            return 0
        return _COMMANDS[args.command](args)
    except CharloomError as exc:
        print(f"charloom: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"charloom: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("charloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (charloom sample ... | head): not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A disk that filled up, a folder that became unwritable: say which file, no traceback.
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        message = _one_line(f"cannot write or read{where}: {exc.strerror or exc}")
        print(f"charloom: error: {message}", file=sys.stderr)
        return 2
