"""Reading text: files, folders, glob patterns, built-in corpora, encodings and normalisation.

Everything that turns a user's notion of "my text" into one Python string lives here, so that
training, evaluation and (later) the visualiser all read text the same way.
"""

from __future__ import annotations

import codecs
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CharloomError

#: The corpus used when no text is given: it ships inside Python's standard library.
DEFAULT_CORPUS = "python-docs"

# How many leading bytes we look at to decide whether a file is binary.
_SNIFF_BYTES = 8192


def _python_docs() -> str:
    # pydoc_data.topics holds the English text of the language reference's main topics
    # (statements, operators, data model, ...): about 465,000 characters of real prose and code.
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip it
        raise CharloomError(
            "the built-in corpus 'python-docs' is missing from this Python installation "
            "(module pydoc_data); give a text file instead"
        ) from exc
    return "".join(topics[key] for key in sorted(topics))


_BUILTIN_CORPORA = {"python-docs": _python_docs}


def builtin_corpora() -> list[str]:
    """Names accepted by ``--corpus``."""
    return sorted(_BUILTIN_CORPORA)


def load_builtin(name: str) -> str:
    """The text of the built-in corpus ``name``."""
    try:
        loader = _BUILTIN_CORPORA[name]
    except KeyError:
        raise CharloomError(
            f"unknown corpus {name!r}; choose one of: {', '.join(builtin_corpora())}"
        ) from None
    return loader()


@dataclass(frozen=True)
class TextSource:
    """Where a training text came from, recorded in a run so that ``--resume`` can re-read it."""

    paths: tuple[str, ...] = ()
    corpus: str | None = None
    encoding: str = "utf-8"
    errors: str = "strict"

    def to_dict(self) -> dict:
        return {
            "paths": list(self.paths),
            "corpus": self.corpus,
            "encoding": self.encoding,
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TextSource:
        return cls(
            paths=tuple(d.get("paths") or ()),
            corpus=d.get("corpus"),
            encoding=d.get("encoding", "utf-8"),
            errors=d.get("errors", "strict"),
        )

    def describe(self) -> str:
        if self.corpus:
            return f"corpus {self.corpus}"
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{len(self.paths)} files"

    def read(self) -> str:
        if self.corpus:
            return load_builtin(self.corpus)
        return read_files(self.paths, encoding=self.encoding, errors=self.errors)


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def expand_paths(specs: Sequence[str]) -> list[str]:
    """Files named by ``specs``: files as given, folders as all text files inside (recursively,
    in sorted order, hidden entries and binary files skipped) and glob patterns expanded."""
    files: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = []
            for root, dirs, names in os.walk(spec):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    path = Path(root) / name
                    if _is_hidden(path) or not path.is_file():
                        continue
                    with open(path, "rb") as fh:
                        if _is_binary(fh.read(_SNIFF_BYTES)):
                            continue
                    found.append(str(path))
            if not found:
                raise CharloomError(f"folder {spec!r} holds no text files")
            files.extend(sorted(found))
        elif os.path.isfile(spec):
            files.append(spec)
        elif glob.has_magic(spec):
            matched = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matched:
                raise CharloomError(f"no files match {spec!r}")
            files.extend(matched)
        else:
            raise CharloomError(f"no such file or folder: {spec!r}")
    return files


def decode_bytes(data: bytes, name: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode one file's bytes: a byte-order mark dropped, CRLF and lone CR turned into LF.

    An undecodable byte is a :class:`CharloomError` naming the file and the byte offset."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CharloomError(f"unknown encoding {encoding!r}") from None
    if errors not in ("strict", "replace", "ignore"):
        raise CharloomError(f"--errors must be strict, replace or ignore, not {errors!r}")
    if _is_binary(data[:_SNIFF_BYTES]) and encoding.lower().replace("-", "").replace(
        "_", ""
    ).startswith("utf8"):
        raise CharloomError(f"{name} looks like a binary file (it contains NUL bytes), not text")
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = data.decode(enc, errors=errors)
    except UnicodeDecodeError as exc:
        raise CharloomError(
            f"{name}: byte {exc.start} (0x{data[exc.start]:02x}) is not valid {encoding}; "
            f"give the right --encoding, or --errors replace to go on"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_files(specs: Sequence[str], encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read and join the text of ``specs`` (files, folders, globs); files are joined with a
    newline where one does not already end the previous file."""
    parts: list[str] = []
    for path in expand_paths(specs):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CharloomError(f"cannot read {path}: {exc.strerror}") from None
        text = decode_bytes(data, path, encoding=encoding, errors=errors)
        if parts and parts[-1] and not parts[-1].endswith("\n"):
            parts.append("\n")
        parts.append(text)
    return "".join(parts)


def read_text(
    paths: Iterable[str] = (),
    corpus: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> tuple[str, TextSource]:
    """The text named by ``paths`` or ``corpus`` (the built-in default when neither is given)."""
    paths = tuple(paths)
    if paths and corpus:
        raise CharloomError("give either text files or --corpus, not both")
    if not paths and not corpus:
        corpus = DEFAULT_CORPUS
    source = TextSource(paths=paths, corpus=corpus, encoding=encoding, errors=errors)
    text = source.read()
    if not text:
        raise CharloomError(f"the text from {source.describe()} is empty")
    return text, source


_SPACE_RUNS = re.compile(r" {2,}")


def normalise_ascii(text: str) -> str:
    """The lecture's normalisation: transliterate to ASCII (unidecode), collapse runs of spaces."""
    from unidecode import unidecode

    return _SPACE_RUNS.sub(" ", unidecode(text))
