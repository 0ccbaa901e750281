"""Fast generation on the CPU: the whole sampling loop compiled with numba.

Generating one character is a few small matrix-vector products; done step by step from Python,
each step costs tens of microseconds of interpreter and dispatch overhead, far more than the
arithmetic. Here the loop - recurrent step for every layer, head, temperature, top-k/top-p and the
draw - runs as one compiled function for many steps at once (the kernels are in ``kernels.py``).

How it is made fast (each step measured with ``charloom bench`` and micro-timings):

- Streams are independent, so each thread takes a contiguous block of them and runs the whole
  block of steps without ever waiting for another thread.
- Inside a block every step is a small matrix product ``(streams, K) @ (K, gates)``, taken four
  streams and four weight rows at a time: each load of the weights serves four streams, each
  output is loaded and stored once per four products, and the inner loop over the gates is a
  plain loop that LLVM turns into AVX-512/AVX2 fused multiply-adds.
- ``exp``, ``sigmoid`` and ``tanh`` are branch-free polynomials in loops that vectorise (libm's
  scalar functions cost more than the products at these sizes), and every kernel is compiled
  with numpy's error model, so a division carries no zero check that would stop vectorising.
- Layer 0's input projection of every character is precomputed: a table lookup.
- One stream is bound by reading the recurrent weights from the L2 cache once per character.

It reads the weights the numpy engine reads (``npgen.GenWeights``) and draws with the same
uniforms as the reference sampler in ``sample.py`` (inverse-CDF sampling), so for a given seed it
produces the same text; the tests
check this against the simple path (float32 rounding differs in the last bits, which changes a
draw only when a uniform falls within about 1e-7 of a boundary).

Nobody waits for the compiler. Importing numba and compiling the kernels (about 15 s the first
time on a machine, a fraction of a second from numba's on-disk cache afterwards) happens in a
background daemon thread started by :func:`prepare`; until :func:`ready`, a stream runs on the
numpy engine (:func:`cpu_blocks`; the server: on torch), and since the engines consume the same
uniforms in the same order, it switches to this engine between two blocks without changing its
text. numba is a dependency of charloom; where it cannot be imported or compiled, or fails at run
time, charloom says so once per process on stderr (the ``charloom`` logger) and goes on with the
uncompiled engine.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from .errors import CharloomError
from .nextchar import SampleSettings, Uniforms
from .npgen import ArrayState, GenWeights, NumpyGenerator
from .samplestream import SampleStream

_KIND_CODE = {"lstm": 0, "gru": 1, "rnn": 2}

#: Where charloom says, once per process, that it cannot use the compiled engine. A logger, not
#: ``print``: an application that configures logging decides where the line goes; without any
#: configuration, Python's last-resort handler writes it to stderr as one line.
log = logging.getLogger("charloom")

INSTALL_HINT = "pip install 'numba>=0.59'"

_lock = threading.Lock()
_thread: threading.Thread | None = None
_kernels: ModuleType | None = None  # set once the kernels are compiled (or loaded from cache)
_failure: str | None = None  # why the compiled engine cannot run in this process
_said: set[str] = set()


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for a message that must never become a traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def say_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is said in this process."""
    with _lock:
        if key in _said:
            return
        _said.add(key)
    log.warning("charloom: %s", message)


def available() -> bool:
    """Whether numba is installed and has not failed in this process (it may still be
    compiling: see :func:`ready`). Cheap: it does not import numba."""
    return _failure is None and importlib.util.find_spec("numba") is not None


def status() -> str:
    """``ready``, ``compiling`` (a background load is under way), ``idle`` (not started),
    ``not installed``, or ``failed: REASON``."""
    if _kernels is not None:
        return "ready"
    if _failure is not None:
        return f"failed: {_failure}"
    if importlib.util.find_spec("numba") is None:
        return "not installed"
    return "compiling" if _thread is not None else "idle"


def ready() -> bool:
    """Whether the compiled kernels can be called now without compiling anything."""
    return _kernels is not None


def failed(reason: str) -> None:
    """Give up the compiled engine for the rest of the process (it raised at run time) and say
    so once; callers fall back to an uncompiled engine."""
    global _failure, _kernels
    with _lock:
        _failure, _kernels = _failure or reason, None
    say_once("failed", f"the compiled engine failed ({reason}); going on with the uncompiled one")


def prepare(wait: bool = False) -> bool:
    """Start importing numba and compiling (or loading from numba's cache) the kernels in a
    daemon thread, unless that is done or under way; with ``wait``, block until it ends.
    Returns :func:`ready`. A daemon thread, so a process that ends meanwhile is not held up."""
    global _thread
    if importlib.util.find_spec("numba") is None:
        say_once(
            "missing",
            f"numba is not installed, so sampling runs on a slower engine "
            f"({INSTALL_HINT} for the compiled one)",
        )
        return False
    with _lock:
        if _thread is None and _failure is None and _kernels is None:
            _thread = threading.Thread(target=_load, name="charloom-compile", daemon=True)
            _thread.start()
        thread = _thread
    if wait and thread is not None:
        thread.join()
    return ready()


def require() -> None:
    """Make the compiled engine ready (waiting for the compiler), since it was asked for by
    name, or refuse in one line."""
    if status() == "not installed":
        raise CharloomError(f"the numba engine needs numba: {INSTALL_HINT}")
    if not prepare(wait=True):
        raise CharloomError(f"the numba engine cannot run here ({status()})")


#: What :func:`compile_ahead` runs: compile (or load) the kernels at the lowest CPU priority,
#: one such process per user at a time (others leave at once: a second compile is wasted work).
_AHEAD = """
import os, sys, tempfile
if hasattr(os, "nice"):
    os.nice(19)
try:
    import fcntl
    lock = open(os.path.join(tempfile.gettempdir(), f"charloom-compile-{os.getuid()}.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except ImportError:
    pass
except OSError:
    sys.exit(0)
from charloom.fastgen import prepare
prepare(wait=True)
"""


def compile_ahead() -> subprocess.Popen | None:
    """Fill numba's on-disk cache in a separate process at the lowest priority, so the first
    ``charloom sample`` after ``charloom train`` finds the kernels compiled. A process, not a
    thread: it takes neither the trainer's interpreter lock nor, at nice 19, much of its CPU,
    it goes on after a short run has ended, and nobody waits for it. Nothing is started (and
    ``None`` returned) where numba is missing or already ready in this process."""
    if ready() or not available():
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _AHEAD],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C meant for training
        )
    except OSError:  # no process to spare: the first sample compiles instead
        return None


def _load() -> None:
    """The background thread: import the kernels and compile them for the argument types
    :class:`FastGenerator` passes, so that its first call compiles nothing."""
    global _kernels, _failure
    try:
        from . import kernels

        args = _example_args()
        for fn, extra in ((kernels.run_block, (0, 0, 1)), (kernels.generate_parallel, (1, 0))):
            fn.compile(tuple(kernels.numba.typeof(a) for a in (*extra, *args)))
    except Exception as exc:  # numba missing a piece, an unsupported CPU, a compiler error
        with _lock:
            _failure = one_line(exc)
        say_once("failed", f"the compiled engine is unavailable ({_failure}); going on without it")
        return
    with _lock:
        if _failure is None:
            _kernels = kernels


def _example_args() -> tuple:
    """The kernels' arguments after ``kind`` (and the streams) for a one-unit model, built by
    the code that builds a real model's (:func:`_call_args`): the types to compile for."""
    weights = tuple(np.zeros(shape, np.float32) for shape in _WEIGHT_SHAPES)
    h, c = np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1), np.float32)
    u, out = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64)
    stopped = np.zeros(1, np.int8)
    logits = np.zeros((1, 2), np.float32)
    return _call_args(weights, h, c, logits, u, SampleSettings(), -1, stopped, out)


# table, w_ih, bias_in, w_hh, b_hh, head_w, head_b of a one-layer, one-unit, two-character model.
_WEIGHT_SHAPES = ((2, 1), (1, 1, 1), (1, 1), (1, 1, 1), (1, 1), (1, 2), (2,))


def _call_args(
    weights: tuple[np.ndarray, ...],
    h: np.ndarray,
    c: np.ndarray,
    logits: np.ndarray,
    u: np.ndarray,
    settings: SampleSettings,
    end: int,
    stopped: np.ndarray,
    out: np.ndarray,
) -> tuple:
    """The kernels' arguments after ``kind`` and the streams, with the settings in the kernels'
    encoding: top-k 0 (or >= V) and top-p 1 keep everything; ``end`` -1: no end symbol,
    ``stopped (B,)`` int8."""
    top_k = min(settings.top_k or 0, logits.shape[1])
    top_p = np.float32(1.0 if settings.top_p is None else settings.top_p)
    temperature = np.float32(settings.temperature)
    greedy = bool(settings.greedy)
    return (*weights, h, c, logits, u, temperature, top_k, top_p, greedy, end, stopped, out)


# Below this many streams per thread, starting threads costs more than it saves.
# The compiled loop releases the GIL (nogil), so that a server's event loop keeps running while
# it computes; numba's simplest threading layer (workqueue) then needs its parallel regions
# started one at a time, which the GIL used to ensure.
_PARALLEL = threading.Lock()
_STREAMS_PER_THREAD = 2


class FastGenerator:
    """The compiled engine for one model's weights (``npgen.GenWeights``, which the numpy
    engine reads too). Build it once :func:`ready` (or after ``prepare(wait=True)``); otherwise
    its first call compiles."""

    def __init__(self, weights: GenWeights) -> None:
        from . import kernels  # imports numba: a second or so, unless prepare() did it

        self._kernels = kernels
        self.kind = _KIND_CODE[weights.kind]
        w = weights
        self.weights = (w.table, w.w_ih, w.bias_in, w.w_hh, w.b_hh, w.head_w, w.head_b)
        self.is_lstm = weights.kind == "lstm"

    def run(
        self,
        state: ArrayState,
        logits: np.ndarray,
        uniforms: np.ndarray,
        settings: SampleSettings,
        end: int | None = None,
        stopped: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ArrayState, np.ndarray]:
        """Draw ``uniforms.shape[0]`` characters for each of B streams (the interface of
        ``npgen.NumpyGenerator``, so a caller can drive either; ``end`` and ``stopped``
        stop streams at the end-of-document symbol as it does).

        ``state``: tuple of (L, B, H) float32 arrays; ``logits (B, V)``: the distribution for
        the first draw; ``uniforms (steps, B)``. Returns ids ``(steps, B)`` int64, the new state
        and the logits after the last character. The arguments are copied, never changed: after
        an exception they still hold the stream's position, so a caller can redo the block with
        another engine."""
        h = np.array(state[0], dtype=np.float32, order="C")
        c = (
            np.array(state[1], dtype=np.float32, order="C")
            if self.is_lstm
            else np.zeros((1, 1, 1), np.float32)
        )
        lg = np.array(logits, dtype=np.float32, order="C")
        u = np.ascontiguousarray(uniforms, dtype=np.float32)
        out = np.empty(u.shape, dtype=np.int64)
        streams = u.shape[1]
        blocks = min(self._kernels.numba.get_num_threads(), streams // _STREAMS_PER_THREAD)
        stop = np.zeros(streams, np.int8)
        if stopped is not None:
            stop[:] = np.asarray(stopped)
        end_id = -1 if end is None else int(end)
        args = _call_args(self.weights, h, c, lg, u, settings, end_id, stop, out)
        if blocks > 1:
            with _PARALLEL:
                self._kernels.generate_parallel(blocks, self.kind, *args)
        else:
            self._kernels.run_block(self.kind, 0, streams, *args)
        return out, ((h, c) if self.is_lstm else (h,)), lg


#: A CPU engine: both draw a block with ``run(state, logits, uniforms, settings)``.
CpuEngine = NumpyGenerator | FastGenerator


def cpu_blocks(
    weights: GenWeights, stream: SampleStream, engine: str = "auto"
) -> Iterator[np.ndarray]:
    """Endless ids ``(n, num_samples)`` drawn for ``stream`` on the CPU, in blocks of 1, 4, 16,
    then 64 steps (so the first characters show at once).

    ``engine``: ``numba`` waits for the compiled engine; ``auto`` starts on the numpy engine
    (the prime and the first blocks; it needs no compiler) while the compiled one is loaded or
    compiled in the background, and switches between two blocks once that is ready; if it fails
    at run time, ``auto`` says so once and redoes the block in numpy; ``numpy`` stays in numpy.
    Blocks stop at exactly ``stream.length`` steps (and go on past it if asked, as bytes mode
    may need). The same seed gives the same ids whatever the switch and the block sizes."""
    slow = NumpyGenerator(weights)
    gen: CpuEngine = FastGenerator(weights) if engine == "numba" else slow
    state, logits = slow.start(stream.prime_ids, stream.num_samples)
    block, left = 1, stream.length
    while True:
        if engine == "auto" and gen is slow and ready():
            gen = _compiled(weights, slow)
        n = min(block, left) if left > 0 else block
        u = stream.uniforms.take(n)
        stop = stream.stop_args()
        try:
            ids, state, logits = gen.run(state, logits, u, stream.settings, *stop)
        except Exception as exc:
            if gen is slow or engine == "numba":
                raise
            failed(one_line(exc))
            gen = slow
            ids, state, logits = gen.run(state, logits, u, stream.settings, *stop)
        yield ids
        if engine == "auto" and block == 1:
            # After the first block, so that loading numba (half a second or more, holding
            # the interpreter's lock much of it) does not delay the first character.
            prepare()
        left -= n
        block = min(block * 4, Uniforms.BLOCK)


def _compiled(weights: GenWeights, slow: NumpyGenerator) -> CpuEngine:
    """The compiled engine for ``weights``, or ``slow`` (saying why, once) if it cannot be
    built."""
    try:
        return FastGenerator(weights)
    except Exception as exc:
        failed(one_line(exc))
        return slow
