"""The API's request and response bodies, with bounds taken from :class:`ServeLimits`.

The request models are built per app because their bounds are the server's configuration: the
generated OpenAPI schema (``/openapi.json``, rendered at ``/docs``) then shows the real limits,
and pydantic's 422 answers name the field that is out of range. Models are strict (a number is
not accepted as text, nor ``true`` as a number) and forbid unknown fields, so a typo such as
``"temprature"`` is an error rather than silently ignored.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..charmodel import CharModel
from ..nextchar import DEFAULT_PRIME
from ..sample import SampleSettings
from .limits import ServeLimits

#: Defaults of the API, taken from the Python API's so the three front ends agree.
_SAMPLE_DEFAULTS = {
    name: p.default for name, p in inspect.signature(CharModel.sample).parameters.items()
}
MIN_TEMPERATURE = 0.01  # below this, logits / temperature overflows float32 for some models
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**63 - 1

_STRICT = ConfigDict(extra="forbid", strict=True)


class GenerateParams(Protocol):
    """What the endpoint reads from a ``GenerateRequest`` (for the type checker: the model
    itself is built at run time by :func:`request_models`)."""

    prime: str
    documents: bool | None
    model_fields_set: set[str]
    length: int
    temperature: float
    top_k: int | None
    top_p: float | None
    greedy: bool
    seed: int | None
    num_samples: int
    stream: bool


class NextParams(Protocol):
    """What the endpoint reads from a ``NextRequest`` (see :class:`GenerateParams`)."""

    text: str
    top: int
    temperature: float
    top_k: int | None
    top_p: float | None
    unknown: str


def request_models(limits: ServeLimits, vocab_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """``(GenerateRequest, NextRequest)`` bounded by ``limits`` and the vocabulary size.

    Their instances have the fields of :class:`GenerateParams` and :class:`NextParams`."""

    def prime_field(default: Any, description: str) -> Any:
        return Field(default, min_length=1, max_length=limits.max_prime, description=description)

    def temperature_field() -> Any:
        return Field(
            SampleSettings.temperature,
            ge=MIN_TEMPERATURE,
            le=MAX_TEMPERATURE,
            allow_inf_nan=False,
            description="divides the logits: lower is more conservative, higher more surprising",
        )

    def top_k_field() -> Any:
        return Field(None, ge=1, le=vocab_size, description="keep only the k likeliest characters")

    def top_p_field() -> Any:
        return Field(
            None,
            gt=0,
            le=1,
            allow_inf_nan=False,
            description="keep the smallest set of likeliest characters whose mass reaches p",
        )

    class GenerateRequest(BaseModel):
        """Generate ``num_samples`` texts: the prime followed by ``length`` new characters."""

        model_config = _STRICT
        prime: str = Field(
            DEFAULT_PRIME,
            max_length=limits.max_prime,
            description=f'text to start from (default "{DEFAULT_PRIME}"; documents mode: none); '
            "every character must be in the model's vocabulary",
        )
        documents: bool | None = Field(
            None,
            description="whole documents, each stopped at its end, length being a cap "
            "(default: whether the model was trained in documents mode)",
        )
        length: int = Field(
            min(_SAMPLE_DEFAULTS["length"], limits.max_length),
            ge=0,
            le=limits.max_length,
            description="new characters per sample",
        )
        temperature: float = temperature_field()
        top_k: int | None = top_k_field()
        top_p: float | None = top_p_field()
        greedy: bool = Field(False, description="always take the likeliest character")
        seed: int | None = Field(
            None, ge=0, le=MAX_SEED, description="the same seed gives the same text"
        )
        num_samples: int = Field(1, ge=1, le=limits.max_samples, description="texts to generate")
        stream: bool = Field(
            False, description="stream the characters as server-sent events as they are made"
        )

    class NextRequest(BaseModel):
        """The likeliest next characters after ``text``, with their probabilities."""

        model_config = _STRICT
        text: str = prime_field(..., description="the text so far")
        top: int = Field(10, ge=1, le=vocab_size, description="how many candidates to return")
        temperature: float = temperature_field()
        top_k: int | None = top_k_field()
        top_p: float | None = top_p_field()
        unknown: Literal["error", "skip"] = Field(
            "error",
            description=(
                "characters outside the vocabulary: error (422, naming them) or skip (leave "
                "them out of the text: the model reads the rest, joined up)"
            ),
        )

    return GenerateRequest, NextRequest


class GenerateResponse(BaseModel):
    texts: list[str] = Field(description="each sample: the prime followed by its completion")
    completions: list[str] = Field(description="each sample's new characters only")
    prime: str = Field(description="the prime as the model read it (after normalisation)")
    ended: list[bool] | None = Field(
        None,
        description="documents mode: whether each document ended by itself (false: it was "
        "cut at the length cap)",
    )
    length: int
    num_samples: int
    seed: int | None
    elapsed_s: float


class Candidate(BaseModel):
    char: str | None = Field(description="the character (null: part of a multi-byte character)")
    id: int = Field(description="its id in the vocabulary")
    prob: float = Field(description="its probability under the request's settings")


class NextResponse(BaseModel):
    candidates: list[Candidate]
    skipped: int = Field(0, description="characters of the text left out as unknown")


class ValidationItem(BaseModel):
    field: str
    msg: str
    type: str
    loc: list[str | int]


class ErrorResponse(BaseModel):
    message: str = Field(description="one line: which field is wrong and why")
    detail: list[ValidationItem] | str
