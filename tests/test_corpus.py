"""charloom.corpus: files, folders, globs, encodings, built-in corpora and normalisation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from charloom.corpus import (
    DEFAULT_CORPUS,
    TextSource,
    builtin_corpora,
    decode_bytes,
    expand_paths,
    load_builtin,
    normalise_ascii,
    read_files,
    read_text,
)
from charloom.errors import CharloomError


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# --- several files, folders, globs --------------------------------------------------------------
def test_files_are_joined_in_the_order_given(tmp_path):
    a = _write(tmp_path / "a.txt", "alpha")  # no final newline: one is added between files
    b = _write(tmp_path / "b.txt", "beta\n")  # ends with one: nothing is added
    c = _write(tmp_path / "c.txt", "gamma")
    assert read_files([str(c), str(a), str(b)]) == "gamma\nalpha\nbeta\n"
    assert read_files([str(a), str(b), str(c)]) == "alpha\nbeta\ngamma"


def test_a_file_given_twice_is_read_twice(tmp_path):
    a = _write(tmp_path / "a.txt", "one\n")
    assert read_files([str(a), str(a)]) == "one\none\n"


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_and_binary(tmp_path):
    d = tmp_path / "texts"
    _write(d / "b.txt", "B\n")
    _write(d / "a.txt", "A\n")
    _write(d / "m" / "c.txt", "C\n")
    _write(d / "m" / "deeper" / "d.txt", "D\n")
    _write(d / "z.md", "Z\n")  # any text file counts, whatever its extension
    _write(d / ".hidden.txt", "HIDDEN FILE\n")
    _write(d / ".git" / "config", "HIDDEN FOLDER\n")
    _write(d / "m" / ".cache" / "x.txt", "HIDDEN NESTED FOLDER\n")
    _write(d / "image.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    _write(d / "m" / "blob.dat", b"text first, then a NUL\x00 byte")

    files = expand_paths([str(d)])
    assert files == [
        str(d / "a.txt"),
        str(d / "b.txt"),
        str(d / "m" / "c.txt"),
        str(d / "m" / "deeper" / "d.txt"),
        str(d / "z.md"),
    ]
    text = read_files([str(d)])
    assert text == "A\nB\nC\nD\nZ\n"
    assert "HIDDEN" not in text
    assert "\x00" not in text


def test_folder_and_file_mixed_keep_the_order_of_the_specs(tmp_path):
    d = tmp_path / "dir"
    _write(d / "2.txt", "two\n")
    _write(d / "1.txt", "one\n")
    f = _write(tmp_path / "first.txt", "first\n")
    assert read_files([str(f), str(d)]) == "first\none\ntwo\n"
    assert read_files([str(d), str(f)]) == "one\ntwo\nfirst\n"


def test_folder_without_text_files_is_refused(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    _write(d / ".only-hidden.txt", "x")
    _write(d / "bin.dat", b"\x00\x01\x02")
    with pytest.raises(CharloomError, match="holds no text files") as exc:
        expand_paths([str(d)])
    assert str(d) in str(exc.value)


def test_glob_patterns_are_expanded_sorted(tmp_path):
    _write(tmp_path / "b.txt", "b\n")
    _write(tmp_path / "a.txt", "a\n")
    _write(tmp_path / "c.md", "c\n")
    _write(tmp_path / "sub" / "d.txt", "d\n")
    assert expand_paths([str(tmp_path / "*.txt")]) == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "b.txt"),
    ]
    assert read_files([str(tmp_path / "*.txt")]) == "a\nb\n"
    # ** is recursive
    assert read_files([str(tmp_path / "**" / "*.txt")]) == "a\nb\nd\n"
    # a pattern that matches only folders matches no files
    (tmp_path / "folder.txt").mkdir()
    assert str(tmp_path / "folder.txt") not in expand_paths([str(tmp_path / "*.txt")])


def test_glob_without_match_is_refused(tmp_path):
    pattern = str(tmp_path / "*.nothing")
    with pytest.raises(CharloomError, match="no files match") as exc:
        expand_paths([pattern])
    assert pattern in str(exc.value)


def test_missing_path_is_refused(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(CharloomError, match="no such file or folder") as exc:
        read_files([missing])
    assert missing in str(exc.value)
    with pytest.raises(CharloomError, match="no such file or folder"):
        read_text([missing])


# --- decoding ----------------------------------------------------------------------------------
def test_utf8_bom_is_stripped(tmp_path):
    assert decode_bytes(b"\xef\xbb\xbfhello", "x.txt") == "hello"
    assert decode_bytes("\ufeffhello".encode(), "x.txt", encoding="UTF8") == "hello"
    f = _write(tmp_path / "bom.txt", b"\xef\xbb\xbfcaf\xc3\xa9\n")
    text, _ = read_text([str(f)])
    assert text == "caf\u00e9\n"
    assert not text.startswith("\ufeff")


def test_bom_is_stripped_under_other_spellings_and_encodings(tmp_path):
    # codec aliases of UTF-8 that are not spelled "utf-8"
    assert decode_bytes("\ufeffhello".encode(), "x", encoding="U8") == "hello"
    assert decode_bytes("\ufeffhello".encode(), "x", encoding="utf_8") == "hello"
    # UTF-16: its NUL bytes are not taken for a binary file, and its BOM is dropped too
    f = _write(tmp_path / "wide.txt", "\ufeffwide\r\ntext\n".encode("utf-16-le"))
    assert read_files([str(f)], encoding="utf-16-le") == "wide\ntext\n"
    g = _write(tmp_path / "wide2.txt", "wide text\n".encode("utf-16"))
    assert read_files([str(g)], encoding="utf-16") == "wide text\n"


def test_bom_of_each_file_is_stripped_when_joining(tmp_path):
    a = _write(tmp_path / "a.txt", b"\xef\xbb\xbfone\n")
    b = _write(tmp_path / "b.txt", b"\xef\xbb\xbftwo\n")
    assert read_files([str(a), str(b)]) == "one\ntwo\n"


def test_crlf_and_lone_cr_become_lf(tmp_path):
    assert decode_bytes(b"a\r\nb\rc\nd\r\r\ne\r", "x") == "a\nb\nc\nd\n\ne\n"
    f = _write(tmp_path / "dos.txt", b"line one\r\nline two\r\n")
    g = _write(tmp_path / "mac.txt", b"old\rmac\r")
    assert read_files([str(f), str(g)]) == "line one\nline two\nold\nmac\n"
    assert "\r" not in read_files([str(f), str(g)])


def test_latin1_encoding(tmp_path):
    f = _write(tmp_path / "latin.txt", b"caf\xe9 \xe0 la cr\xe8me\r\n")
    text, source = read_text([str(f)], encoding="latin-1")
    assert text == "caf\u00e9 \u00e0 la cr\u00e8me\n"
    assert source.encoding == "latin-1"
    assert source.read() == text  # the recorded source reads the same text again


def test_undecodable_byte_names_file_and_offset(tmp_path):
    f = _write(tmp_path / "latin.txt", b"good text\nthen caf\xe9\n")
    with pytest.raises(CharloomError) as exc:
        read_files([str(f)])
    msg = str(exc.value)
    assert str(f) in msg
    assert "byte 18" in msg
    assert "0xe9" in msg
    assert "--encoding" in msg and "--errors replace" in msg
    assert "\n" not in msg
    # the same through decode_bytes with the name it is given
    with pytest.raises(CharloomError, match=r"^notes\.txt: byte 3 "):
        decode_bytes(b"abc\xff", "notes.txt")


def test_undecodable_byte_in_second_file_names_that_file(tmp_path):
    a = _write(tmp_path / "a.txt", "fine\n")
    b = _write(tmp_path / "b.txt", b"\x80oops")
    with pytest.raises(CharloomError) as exc:
        read_files([str(a), str(b)])
    assert str(b) in str(exc.value)
    assert str(a) not in str(exc.value)
    assert "byte 0" in str(exc.value)


def test_errors_replace_and_ignore_go_on(tmp_path):
    f = _write(tmp_path / "bad.txt", b"caf\xe9 ok\n")
    text, source = read_text([str(f)], errors="replace")
    assert text == "caf\ufffd ok\n"
    assert source.errors == "replace"
    assert read_files([str(f)], errors="ignore") == "caf ok\n"


def test_unknown_encoding_and_errors_mode_are_refused():
    with pytest.raises(CharloomError, match="unknown encoding 'no-such-codec'"):
        decode_bytes(b"abc", "x", encoding="no-such-codec")
    with pytest.raises(CharloomError, match="--errors"):
        decode_bytes(b"abc", "x", errors="surrogateescape")


def test_binary_file_is_refused(tmp_path):
    f = _write(tmp_path / "prog.bin", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00rest")
    with pytest.raises(CharloomError, match="binary") as exc:
        read_files([str(f)])
    assert str(f) in str(exc.value)
    with pytest.raises(CharloomError, match="binary"):
        decode_bytes(b"a\x00b", "x.txt")
    # --errors replace does not turn a binary file into text
    with pytest.raises(CharloomError, match="binary"):
        read_text([str(f)], errors="replace")


def test_empty_text_is_refused(tmp_path):
    f = _write(tmp_path / "empty.txt", b"")
    with pytest.raises(CharloomError, match="empty") as exc:
        read_text([str(f)])
    assert str(f) in str(exc.value)
    # a file holding only a byte-order mark is empty too
    g = _write(tmp_path / "bom-only.txt", b"\xef\xbb\xbf")
    with pytest.raises(CharloomError, match="empty"):
        read_text([str(g)])
    # and several empty files together
    with pytest.raises(CharloomError, match="empty"):
        read_text([str(f), str(g)])


# --- built-in corpora ----------------------------------------------------------------------------
def test_builtin_python_docs_loads():
    assert "python-docs" in builtin_corpora()
    text = load_builtin("python-docs")
    assert isinstance(text, str)
    assert len(text) > 100_000
    assert "def " in text and "class" in text  # it is the Python language reference


def test_builtin_corpus_is_the_default_without_paths():
    assert DEFAULT_CORPUS == "python-docs"
    text, source = read_text()
    assert source.corpus == "python-docs"
    assert source.paths == ()
    assert text == load_builtin("python-docs")
    text2, source2 = read_text([], corpus="python-docs")
    assert text2 == text and source2 == source
    assert source.describe() == "corpus python-docs"
    assert TextSource.from_dict(source.to_dict()) == source


def test_unknown_corpus_is_refused():
    with pytest.raises(CharloomError, match="unknown corpus 'shakespeare'") as exc:
        load_builtin("shakespeare")
    assert "python-docs" in str(exc.value)  # the message lists what there is
    with pytest.raises(CharloomError, match="unknown corpus"):
        read_text(corpus="shakespeare")


def test_paths_and_corpus_together_are_refused(tmp_path):
    f = _write(tmp_path / "a.txt", "a\n")
    with pytest.raises(CharloomError, match="not both"):
        read_text([str(f)], corpus="python-docs")


# --- normalisation ----------------------------------------------------------------------------
def test_normalise_ascii_transliterates():
    assert normalise_ascii("\u201cHello\u201d, \u2018world\u2019") == "\"Hello\", 'world'"
    assert normalise_ascii("caf\u00e9 na\u00efve \u00c5ngstr\u00f6m") == "cafe naive Angstrom"
    assert normalise_ascii("Stra\u00dfe") == "Strasse"
    out = normalise_ascii("\u00bfQu\u00e9 tal? \u2014 \u00a9 \u20ac5 \u00e6")
    assert out.isascii()


def test_normalise_ascii_collapses_runs_of_spaces_only():
    assert normalise_ascii("a  b     c d") == "a b c d"
    # tabs and newlines are kept as they are; only spaces collapse
    assert normalise_ascii("a\t\tb\n\n  c") == "a\t\tb\n\n c"
    # a non-breaking space becomes a space and joins the run
    assert normalise_ascii("a \u00a0 b") == "a b"


def test_normalise_ascii_leaves_plain_ascii_alone():
    plain = "The quick brown fox.\nIt's 12:30 (ok) [yes] {no} #1 ~ ^ `x`\n"
    assert normalise_ascii(plain) == plain


def test_source_reads_relative_paths_from_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "rel.txt", "relative\n")
    monkeypatch.chdir(tmp_path)
    text, source = read_text(["rel.txt"])
    assert text == "relative\n"
    assert source.describe() == "rel.txt"
    assert os.path.basename(source.paths[0]) == "rel.txt"
