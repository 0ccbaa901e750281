"""ModelConfig: a CharRNN's shape (cell kind, sizes), free of torch.

Apart from ``model.py`` so that reading a checkpoint's settings - and sampling on the CPU with the
numpy and compiled engines, which never build a torch module - does not import torch (seconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import CharloomError

MODEL_KINDS = ("lstm", "gru", "rnn")
#: How a CharRNN runs a sequence: the fused module, or the cell stepped per character.
PATHS = ("fused", "cell")
# Gate blocks per recurrent layer: the rows of weight_ih/weight_hh are GATES[kind] * hidden.
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# Upper bounds a saved or requested configuration must respect, checked before any allocation.
_LIMITS = {"layers": 64, "hidden": 65_536, "embed": 65_536, "vocab_size": 1_114_112}
_MAX_PARAMETERS = 4_000_000_000


def weight_names(layer: int) -> dict[str, str]:
    """Where layer ``layer``'s recurrent parameters are in a CharRNN's state dict (and so in a
    checkpoint's ``model.safetensors``), by the names ``nn.LSTMCell`` gives them."""
    return {
        name: f"rnn.{name}_l{layer}" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }


#: The embedding's and the head's names in the state dict.
EMBEDDING, HEAD_WEIGHT, HEAD_BIAS = "embedding.weight", "head.weight", "head.bias"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a CharRNN's shape. The one home of model defaults.

    The metadata is how ``charloom train`` offers each field (see ``config._setting``)."""

    kind: str = field(
        default="lstm",
        metadata=dict(help="the recurrent cell", flag="--model", choices=MODEL_KINDS),
    )
    vocab_size: int = field(default=0, metadata=dict(cli=False))  # set from the text
    embed: int = field(default=64, metadata=dict(help="embedding width", min=1))
    hidden: int = field(default=256, metadata=dict(help="hidden units per layer", min=1))
    layers: int = field(default=2, metadata=dict(help="recurrent layers", min=1))
    dropout: float = field(
        default=0.0, metadata=dict(help="dropout between recurrent layers (0 to 1)")
    )

    def validate(self) -> None:
        """Refuse impossible or absurd settings with a :class:`CharloomError`."""
        if self.kind not in MODEL_KINDS:
            raise CharloomError(
                f"unknown model {self.kind!r}; choose one of: {', '.join(MODEL_KINDS)}"
            )
        for name, hi in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise CharloomError(f"model {name} must be an integer in 1..{hi}, not {value!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise CharloomError(f"dropout must be in [0, 1), not {d!r}")
        if self.parameter_count() > _MAX_PARAMETERS:
            raise CharloomError(
                f"a model of {self.parameter_count():,} parameters is too large for charloom"
            )

    @property
    def gates(self) -> int:
        """Gate blocks per layer (LSTM 4, GRU 3, RNN 1)."""
        return GATES[self.kind]

    def parameter_count(self) -> int:
        """Number of parameters, computed without building the model."""
        gates = self.gates
        n = self.vocab_size * self.embed
        for layer in range(self.layers):
            inp = self.embed if layer == 0 else self.hidden
            n += gates * self.hidden * (inp + self.hidden + 2)
        return n + self.hidden * self.vocab_size + self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> ModelConfig:
        if not isinstance(d, dict):
            raise CharloomError("the saved model settings are not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CharloomError(f"unknown model settings in config: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg
