"""The training state saved beside a checkpoint's weights, so that a run resumes exactly.

``latest/`` holds, besides the model: the optimiser's moments, every random generator a step
draws from (torch's, per rank; CUDA's; the batch sampler's), the recurrent state carried between
stream batches, and the counters of the loop. All of it is JSON or safetensors - no pickle.
Under torchrun rank 0 gathers the other ranks' generators and carried state and writes one
checkpoint holding the whole state, so a run resumes with any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batches import Batches
from .checkpoint import Checkpoint
from .errors import CharloomError
from .model import State


@dataclass
class LoopCounters:
    """Where the loop stood when the checkpoint was written."""

    iteration: int = 0
    elapsed: float = 0.0
    chars_seen: int = 0
    best_val_loss: float | None = None
    best_iteration: int | None = None
    last_val_loss: float | None = None
    window_loss: float | None = None


def rank_state(device: torch.device, carry: State | None) -> dict[str, torch.Tensor]:
    """What differs between ranks: random generators and the carried state (this rank's
    streams), on the CPU."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    for i, t in enumerate(carry or ()):
        tensors[f"carry.{i}"] = t.detach().cpu()
    return tensors


def training_state(
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    ranks: list[dict[str, torch.Tensor]],
) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(JSON part, tensors)`` of the optimiser, the batches and every rank's generators and
    carried state (``ranks``: :func:`rank_state` of each rank, rank 0 first)."""
    opt_meta, opt_tensors = flatten_optimizer(optimizer.state_dict())
    tensors = dict(opt_tensors)
    for rank, part in enumerate(ranks):
        for key in ("rng.torch", "rng.cuda"):
            if key in part:
                tensors[key + (f".rank{rank}" if rank else "")] = part[key]
    for key in (k for k in ranks[0] if k.startswith("carry.")):
        tensors[key] = torch.cat([part[key] for part in ranks], dim=1)  # (L, B, H)
    batch_state = batches.state_dict()
    tensors["rng.batches"] = batch_state.pop("rng")
    meta = {"batches": batch_state, "optimizer": opt_meta, "processes": len(ranks)}
    return meta, tensors


def restore_training_state(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    device: torch.device,
    rank: int = 0,
    share=None,
) -> tuple[LoopCounters, State | None]:
    """Load ``checkpoint`` (written with :func:`training_state`) into the model, optimiser,
    batches and this rank's generators; returns the loop counters and the carried state on
    ``device`` (``share(n)``: this rank's slice of ``n`` streams, under torchrun)."""
    st, tensors = checkpoint.state, checkpoint.state_tensors
    try:
        model.load_state_dict(checkpoint.weights)
        optimizer.load_state_dict(unflatten_optimizer(st["optimizer"], tensors))
        suffix = f".rank{rank}" if rank else ""
        # A rank the saved run did not have keeps the generator it was seeded with.
        if not rank or "rng.torch" + suffix in tensors:
            torch.set_rng_state(tensors["rng.torch" + suffix])
        if device.type == "cuda" and "rng.cuda" + suffix in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda" + suffix], device)
        batches.load_state_dict({**st["batches"], "rng": tensors["rng.batches"]})
        carry = [tensors[k] for k in sorted(t for t in tensors if t.startswith("carry."))]
        if carry and share is not None:  # this rank's streams of the whole state
            carry = [t[:, share(t.shape[1])] for t in carry]
        counters = LoopCounters(
            iteration=int(st["iteration"]),
            elapsed=float(st["elapsed"]),
            chars_seen=int(st["chars_seen"]),
            best_val_loss=st.get("best_val_loss"),
            best_iteration=st.get("best_iteration"),
            last_val_loss=st.get("last_val_loss"),
            window_loss=st.get("window_loss"),
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CharloomError(
            f"{checkpoint.path}: the training state is damaged or does not match ({exc})"
        ) from None
    return counters, (tuple(t.to(device) for t in carry) if carry else None)


def flatten_optimizer(opt_state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Optimizer ``state_dict`` -> (JSON part, tensors), so no pickle is ever needed."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": opt_state["param_groups"], "scalars": scalars}, tensors


def unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}
