"""Id arrays -> training batches.

Two ways to cut a text into batches, both yielding ``x, y`` of shape ``(B, T)`` with ``y`` the
next character of each ``x`` (inputs and targets shifted by one):

- :class:`Portions` - the lecture's: ``B`` random portions of ``T + 1`` characters; the model
  starts each portion from the zero state (in documents mode, at a document's start).
- :class:`Streams` - the text cut into ``B`` contiguous streams read ``T`` characters at a time;
  the recurrent state is carried from one batch to the next (truncated back-propagation through
  time), so the model learns dependencies longer than ``T``. After each pass over the text the
  streams start again at a fresh random offset, and ``new_epoch`` tells the trainer to reset state.

Both hold their position and random generator as plain tensors/ints, saved in a checkpoint so
that a resumed run draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import torch

from .errors import CharloomError


class Portions:
    """Random portions of ``seq_len + 1`` characters, ``batch_size`` at a time."""

    carries_state = False

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        seq_len: int,
        seed: int,
        starts: torch.Tensor | None = None,
    ) -> None:
        if len(data) < seq_len + 1:
            raise CharloomError(
                f"the training text has {len(data)} characters, fewer than one training "
                f"sequence ({seq_len + 1}); use a longer text or a smaller --seq-len"
            )
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self.new_epoch = False
        self._offsets = torch.arange(seq_len + 1)
        # Where portions may start (documents mode: at documents' starts), or anywhere.
        self.starts = starts if starts is not None and len(starts) else None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, y``: ``(B, T)`` int64 each."""
        if self.starts is not None:
            pick = torch.randint(0, len(self.starts), (self.batch_size,), generator=self.generator)
            starts = self.starts[pick]
        else:
            high = len(self.data) - self.seq_len  # a start s needs s + T + 1 <= len
            starts = torch.randint(0, high, (self.batch_size,), generator=self.generator)
        chunk = self.data[starts[:, None] + self._offsets].long()
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])


class Streams:
    """``batch_size`` contiguous streams over the text, read ``seq_len`` characters at a time."""

    carries_state = True

    def __init__(self, data: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        per_stream = (len(data) - 1) // batch_size
        if per_stream < seq_len:
            need = batch_size * seq_len + 1
            raise CharloomError(
                f"the training text has {len(data)} characters, fewer than one training batch "
                f"of {batch_size} streams x {seq_len} ({need}); use a longer text or a smaller "
                "--batch-size or --seq-len"
            )
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.step = 0  # batches taken in this epoch
        self.new_epoch = True
        self._start_epoch()

    def _start_epoch(self) -> None:
        # Each epoch shifts the streams by a random offset so batches are not the same windows
        # every pass; the generator draw is part of the saved state.
        slack = len(self.data) - 1 - self.batch_size * self.seq_len
        slack = min(slack, self.seq_len)
        offset = int(torch.randint(0, slack + 1, (1,), generator=self.generator))
        usable = len(self.data) - 1 - offset
        self.stream_len = usable // self.batch_size
        self.steps_per_epoch = self.stream_len // self.seq_len
        self.offset = offset

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, y``: ``(B, T)`` int64 each; ``new_epoch`` is True when streams restarted."""
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
            self._start_epoch()
        self.new_epoch = self.step == 0
        starts = (
            self.offset + torch.arange(self.batch_size) * self.stream_len + self.step * self.seq_len
        )
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        chunk = self.data[idx].long()
        self.step += 1
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict:
        return {
            "rng": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "offset": self.offset,
        }

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
        self.epoch, self.step = int(d["epoch"]), int(d["step"])
        offset = int(d["offset"])
        usable = len(self.data) - 1 - offset
        self.offset = offset
        self.stream_len = usable // self.batch_size
        self.steps_per_epoch = self.stream_len // self.seq_len


# Either kind of batch source; both have ``next()``, ``carries_state``, ``new_epoch`` and
# ``state_dict()``/``load_state_dict()`` (for exact resume).
Batches = Portions | Streams


def make_batches(
    kind: str,
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    seed: int,
    starts: torch.Tensor | None = None,
) -> Batches:
    """The batcher named ``kind`` (``stream`` or ``portions``) over ``data (N,)``; ``starts
    (k,)``: where portions may start (documents mode: documents' starts; streams ignore it)."""
    if kind not in KINDS:
        raise CharloomError(f"unknown batching {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "portions":
        return Portions(data, batch_size, seq_len, seed, starts)
    return Streams(data, batch_size, seq_len, seed)


#: The batchers by the name ``--batching`` gives them (``config.BATCHINGS``, which a test keeps
#: equal to these keys: config offers the choice without importing torch).
KINDS: dict[str, type[Portions] | type[Streams]] = {"stream": Streams, "portions": Portions}
