"""CharRNN: embedding -> recurrent stack -> linear head, with two execution paths.

Shapes, used throughout the project:

- ``ids``: ``(B, T)`` integer character ids;
- ``logits``: ``(B, T, V)``;
- ``state``: a tuple of ``(L, B, H)`` tensors - ``(h, c)`` for an LSTM, ``(h,)`` for GRU/RNN.
  ``None`` means the zero state.

The **fused** path runs the whole sequence through ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (one call,
cuDNN/oneDNN kernels). The **cell** path is the lecture's: ``nn.LSTMCell`` (or GRUCell/RNNCell)
stepped one character at a time, layer by layer. Both read the *same* parameters - the cell path
borrows the fused module's weights with ``torch.func.functional_call`` - so a checkpoint has one
set of names, and the slow, obviously-correct path is the reference the fast one is tested
against.

The public ways in: ``forward`` (a sequence), ``step`` (one character per sequence, for
generators), ``forward_with_states`` (every layer's state at every step, for the visualiser) and
``layer_weights`` (a layer's recurrent parameters, for anything that computes the recurrence
itself, such as the compiled generator in ``fastgen.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .modelconfig import PATHS, ModelConfig

_RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_CELL_CLASSES = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}

State = tuple[torch.Tensor, ...]


class CharRNN(nn.Module):
    """Character-level recurrent language model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed)
        # The fused module owns the recurrent weights (weight_ih_l0, weight_hh_l0, ...).
        self.rnn = _RNN_CLASSES[config.kind](
            config.embed,
            config.hidden,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden, config.vocab_size)
        # Cell modules for the per-step path; they hold no parameters of their own (their
        # weights are swapped for the fused module's at call time), so they are not registered.
        self._cells = [
            _CELL_CLASSES[config.kind](
                config.embed if layer == 0 else config.hidden, config.hidden, device="meta"
            )
            for layer in range(config.layers)
        ]

    @property
    def is_lstm(self) -> bool:
        return self.config.kind == "lstm"

    def zero_state(self, batch: int, device=None, dtype=None) -> State:
        """The all-zero state for ``batch`` sequences."""
        p = self.head.weight
        shape = (self.config.layers, batch, self.config.hidden)
        z = torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
        return (z, z.clone()) if self.is_lstm else (z,)

    def layer_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """Layer ``layer``'s recurrent parameters (0-based), named as ``nn.LSTMCell`` names them.

        ``weight_ih (G*H, In)``, ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``, ``bias_hh (G*H,)``,
        with ``G = config.gates`` blocks of rows in torch's gate order (LSTM: i, f, g, o; GRU:
        r, z, n) and ``In`` the embedding size for layer 0, else ``H``. These are the live
        parameters of the fused module, not copies: the one place every other reader of the
        recurrent weights (the cell path, the compiled generator) gets them from."""
        if isinstance(layer, bool) or not 0 <= layer < self.config.layers:
            raise IndexError(f"layer {layer!r} is not in 0..{self.config.layers - 1}")
        r = self.rnn
        return {
            "weight_ih": getattr(r, f"weight_ih_l{layer}"),
            "weight_hh": getattr(r, f"weight_hh_l{layer}"),
            "bias_ih": getattr(r, f"bias_ih_l{layer}"),
            "bias_hh": getattr(r, f"bias_hh_l{layer}"),
        }

    def forward(
        self,
        ids: torch.Tensor,
        state: State | None = None,
        path: str = "fused",
        with_head: bool = True,
    ) -> tuple[torch.Tensor, State]:
        """``ids (B, T)`` -> ``logits (B, T, V)``, new state (see module docstring).

        ``with_head=False``: the top layer's outputs ``(B, T, H)`` instead of the logits, for a
        caller that runs the head itself a slice at a time (``loss.py``: a large vocabulary's
        logits are too big to hold at once). A keyword of ``forward`` rather than a method of
        its own, so that it also goes through a ``DistributedDataParallel`` wrapper."""
        if path == "fused":
            out, state = self._fused(ids, state)
        elif path == "cell":
            h_steps, _, state = self._cell_loop(ids, state)
            out = torch.stack(h_steps[-1], dim=1)  # the top layer's h at every step: (B, T, H)
        else:
            raise ValueError(f"unknown path {path!r}; choose one of: {', '.join(PATHS)}")
        return (self.head(out) if with_head else out), state

    def step(
        self, ids: torch.Tensor, state: State | None = None, path: str = "fused"
    ) -> tuple[torch.Tensor, State]:
        """One character per sequence: ``ids (B,)`` -> ``logits (B, V)``, new state.

        What a generator calls once per drawn character; ``forward`` on a one-step sequence,
        so the text drawn one step at a time is the text ``forward`` scores."""
        logits, state = self.forward(ids.unsqueeze(1), state, path)
        return logits[:, 0], state

    def forward_with_states(
        self, ids: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """``ids (B, T)`` -> ``logits (B, T, V)`` and every layer's state after every character.

        The states are laid out as a :data:`State` with a time axis: a tuple of
        ``(L, B, T, H)`` tensors, ``(h, c)`` for an LSTM and ``(h,)`` otherwise, so
        ``tuple(s[:, :, -1] for s in states)`` is the state ``forward`` returns. Computed by the
        cell path, because the fused module returns only the top layer's ``h`` at each step
        (this is what the visualiser shows)."""
        h_steps, c_steps, _ = self._cell_loop(ids, state)
        states = tuple(
            torch.stack([torch.stack(per_layer, dim=1) for per_layer in steps])  # (L, B, T, H)
            for steps in ((h_steps, c_steps) if self.is_lstm else (h_steps,))
        )
        return self.head(states[0][-1]), states

    def _fused(self, ids: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        x = self.embedding(ids)
        if state is None:
            out, new = self.rnn(x)
        else:
            out, new = self.rnn(x, state if self.is_lstm else state[0])
        return out, (tuple(new) if self.is_lstm else (new,))

    def _cell_loop(
        self, ids: torch.Tensor, state: State | None
    ) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], State]:
        """The lecture's loop - one character at a time, through each layer in turn.

        ``ids (B, T)`` -> per layer, the list of its ``h`` after each step (each ``(B, H)``), the
        same for ``c`` (LSTM; else empty lists), and the final state. Lists rather than stacked
        tensors, so a caller stacks only what it needs."""
        batch, steps = ids.shape
        if state is None:
            state = self.zero_state(batch)
        hs = list(state[0].unbind(0))
        cs = list(state[1].unbind(0)) if self.is_lstm else None
        weights = [self.layer_weights(layer) for layer in range(self.config.layers)]
        drop = self.config.dropout if (self.training and self.config.layers > 1) else 0.0
        h_steps: list[list[torch.Tensor]] = [[] for _ in self._cells]
        c_steps: list[list[torch.Tensor]] = [[] for _ in self._cells]
        x = self.embedding(ids)  # (B, T, E)
        for t in range(steps):
            inp = x[:, t]
            for layer, cell in enumerate(self._cells):
                if layer > 0 and drop:
                    inp = nn.functional.dropout(inp, drop, training=True)
                if cs is not None:
                    hs[layer], cs[layer] = functional_call(
                        cell, weights[layer], (inp, (hs[layer], cs[layer]))
                    )
                    c_steps[layer].append(cs[layer])
                else:
                    hs[layer] = functional_call(cell, weights[layer], (inp, hs[layer]))
                h_steps[layer].append(hs[layer])
                inp = hs[layer]
        new = (torch.stack(hs), torch.stack(cs)) if cs is not None else (torch.stack(hs),)
        return h_steps, c_steps, new

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind ``state`` (truncated back-propagation through time)."""
    return None if state is None else tuple(s.detach() for s in state)
