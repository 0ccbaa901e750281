"""Reading text: files, folders, glob patterns, built-in corpora, encodings and normalisation.

Everything that turns a user's notion of "my text" into one Python string lives here, so that
training, evaluation and (later) the visualiser all read text the same way.
"""

from __future__ import annotations

import codecs
import glob
import os
import re
from collections.abc import Iterable, Iterator, Sequence
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
    prepared: bool = False  # ``paths[0]`` is a folder written by ``charloom prepare``

    def to_dict(self) -> dict:
        d: dict[str, object] = {
            "paths": list(self.paths),
            "corpus": self.corpus,
            "encoding": self.encoding,
            "errors": self.errors,
        }
        if self.prepared:
            d["prepared"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TextSource:
        return cls(
            paths=tuple(d.get("paths") or ()),
            corpus=d.get("corpus"),
            encoding=d.get("encoding", "utf-8"),
            errors=d.get("errors", "strict"),
            prepared=d.get("prepared") is True,
        )

    def describe(self) -> str:
        if self.corpus:
            return f"corpus {self.corpus}"
        if self.prepared:
            return f"prepared data {self.paths[0]}"
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{len(self.paths)} files"

    def read(self) -> str:
        if self.prepared:
            raise CharloomError(f"{self.paths[0]} holds prepared ids, not text")
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


class FileDecoder:
    """One file's bytes -> text, fed in pieces of any size (a streaming ``decode_bytes``).

    A UTF-8 byte-order mark is dropped (and one leading U+FEFF under any encoding), CRLF and lone
    CR become LF - also when a multi-byte character, the mark or a CRLF is split between pieces.
    An undecodable byte is a :class:`CharloomError` naming the file and its byte offset."""

    def __init__(self, name: str, encoding: str = "utf-8", errors: str = "strict") -> None:
        try:
            codec = codecs.lookup(encoding)
        except (LookupError, ValueError):  # ValueError: a name with a NUL character in it
            raise CharloomError(f"unknown encoding {encoding!r}") from None
        if errors not in ("strict", "replace", "ignore"):
            raise CharloomError(f"--errors must be strict, replace or ignore, not {errors!r}")
        self.name, self.encoding = name, encoding
        self._utf8 = codec.name == "utf-8"
        self._decoder = codec.incrementaldecoder(errors)
        self._head = b""  # bytes held back until we know whether they start with a BOM
        self._offset = 0  # file offset of the next byte handed to the codec
        self._started = False  # text has been produced (a leading U+FEFF is dropped before)
        self._cr = False  # the text so far ends with a CR that may be half of a CRLF

    def feed(self, data: bytes, final: bool = False) -> str:
        """The text that ``data`` completes (``final``: the file ends after it)."""
        if self._offset + len(self._head) < _SNIFF_BYTES and self._utf8:
            start = self._offset + len(self._head)
            if _is_binary(data[: _SNIFF_BYTES - start]):
                raise CharloomError(
                    f"{self.name} looks like a binary file (it contains NUL bytes), not text"
                )
        if self._offset == 0 and len(self._head) < len(codecs.BOM_UTF8):
            self._head += data
            if len(self._head) < len(codecs.BOM_UTF8) and not final:
                return ""
            data, self._head = self._head, b""
            if self._utf8 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
                self._offset = len(codecs.BOM_UTF8)
        held = len(self._decoder.getstate()[0])  # bytes of an unfinished character
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            at = self._offset - held + exc.start
            raise CharloomError(
                f"{self.name}: byte {at} (0x{exc.object[exc.start]:02x}) is not valid "
                f"{self.encoding}; give the right --encoding, or --errors replace to go on"
            ) from None
        self._offset += len(data)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._cr:
            text, self._cr = "\r" + text, False
        if text.endswith("\r") and not final:
            text, self._cr = text[:-1], True
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text

    def finish(self) -> str:
        """The rest of the text, at the end of the file."""
        return self.feed(b"", final=True)


def decode_bytes(data: bytes, name: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode one file's bytes: a byte-order mark dropped, CRLF and lone CR turned into LF.

    An undecodable byte is a :class:`CharloomError` naming the file and the byte offset."""
    return FileDecoder(name, encoding, errors).feed(data, final=True)


def iter_text(
    specs: Sequence[str],
    encoding: str = "utf-8",
    errors: str = "strict",
    chunk_size: int = 1 << 22,
) -> Iterator[str]:
    """The text :func:`read_files` returns, in pieces, reading ``chunk_size`` bytes at a time:
    memory stays constant whatever the size of the files."""
    previous_end: str | None = None  # last character of the previous file's text
    for path in expand_paths(specs):
        if previous_end is not None and previous_end != "\n":
            yield "\n"
        decoder, end = FileDecoder(path, encoding, errors), None
        try:
            with open(path, "rb") as fh:
                while True:
                    data = fh.read(chunk_size)
                    text = decoder.feed(data, final=not data)
                    if text:
                        end = text[-1]
                        yield text
                    if not data:
                        break
        except OSError as exc:
            raise CharloomError(f"cannot read {path}: {exc.strerror}") from None
        previous_end = end


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


class AsciiNormaliser:
    """:func:`normalise_ascii` for a text fed in pieces: a run of spaces split between pieces
    is collapsed too, so the pieces' results join to ``normalise_ascii`` of the whole."""

    def __init__(self) -> None:
        self._space = False  # what was returned so far ends with a space

    def feed(self, text: str) -> str:
        out = normalise_ascii(text)
        if self._space and out.startswith(" "):
            out = out[1:]
        if out:
            self._space = out.endswith(" ")
        return out
