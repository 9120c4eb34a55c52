"""`flowcli.io.pair_list`: the --pairs LIST reader shared by `flowcli estimate` and `flowcli stereo`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flowcli.io.pair_list import ListedPair, errors_at, read_image_pairs, read_pair_list
from flowcli.errors import InputError


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_quotes_tabs_crlf_comments_and_a_bom_are_read_as_a_shell_would(tmp_path):
    pair_list = _write(tmp_path / "lists" / "pairs.txt", (
        "\ufeff# scenes\n"  # a BOM from a Windows editor, before a comment
        "\"rig one/im0.png\" 'rig one/im1.png'\r\n"
        "\n"
        "   # an indented comment\n"
        "a.png\tb.png\r\n"
        "  ../data/c.png   /abs/d.png  \n"
        "\t\n"
        "e\\ f.png g.png"  # no newline at the end
    ).encode())
    folder = tmp_path / "lists"
    assert list(read_pair_list(pair_list)) == [
        ListedPair(folder / "rig one/im0.png", folder / "rig one/im1.png", f"{pair_list}:2"),
        ListedPair(folder / "a.png", folder / "b.png", f"{pair_list}:5"),
        ListedPair(folder / "../data/c.png", Path("/abs/d.png"), f"{pair_list}:6"),
        ListedPair(folder / "e f.png", folder / "g.png", f"{pair_list}:8"),
    ]


def test_a_bom_before_the_first_pair_is_not_part_of_its_path(tmp_path):
    pair_list = _write(tmp_path / "pairs.txt", "\ufeffa.png b.png\n".encode())
    [pair] = read_pair_list(pair_list)
    assert (pair.first, pair.second, pair.where) == (tmp_path / "a.png", tmp_path / "b.png", f"{pair_list}:1")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_utf_16_list_with_its_bom_is_read_as_text(tmp_path, encoding):
    # Windows PowerShell 5's `... > pairs.txt`; read as UTF-8, its NULs and BOM made the paths 'i m g s / ...'
    pair_list = _write(tmp_path / "pairs.txt", "\ufeff# pairs\r\n'a b.png' c.png\r\n".encode(encoding))
    assert list(read_pair_list(pair_list)) == [ListedPair(tmp_path / "a b.png", tmp_path / "c.png", f"{pair_list}:2")]


def test_a_list_in_the_current_folder_gives_paths_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "pairs.txt", b"a.png sub/b.png\n")
    assert list(read_pair_list("pairs.txt")) == [ListedPair(Path("a.png"), Path("sub/b.png"), "pairs.txt:1")]


def test_undecodable_bytes_stay_the_file_name_bytes_they_stand_for(tmp_path):
    pair_list = _write(tmp_path / "pairs.txt", b"caf\xe9.png b.png\n")  # Latin-1, not UTF-8
    [pair] = read_pair_list(pair_list)
    assert pair.first.parent == tmp_path and os.fsencode(pair.first.name) == b"caf\xe9.png"


def test_a_list_on_stdin_is_relative_to_the_current_folder(pipe_into_stdin):
    pipe_into_stdin(b"# from a script\ndata/c.png '../d e.png'\n")
    assert list(read_pair_list("-")) == [ListedPair(Path("data/c.png"), Path("../d e.png"), "stdin:2")]


def test_stdin_that_is_a_terminal_is_refused(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(InputError) as error:
        list(read_pair_list("-"))
    assert str(error.value) == ("--pairs - reads the list from stdin, but nothing is piped in; pipe one in, or give "
                                "the list's file: --pairs pairs.txt")


@pytest.mark.parametrize(("text", "message"), [
    ("a.png b.png\n'c.png d.png\n", ":2: no closing quotation; close the quote, or quote the path that holds a quote "
     "or backslash"),
    ("a.png b.png\nc.png d.png e.png\n", ":2: expected two image paths, found 3; quote paths that contain spaces"),
    ("a.png b.png\n'c d.png'\n", ":2: expected two image paths, found 1; quote paths that contain spaces"),
    ("", " has no pairs: give one pair per line, two image paths"),
    ("# only a comment\n\n  \n", " has no pairs: give one pair per line, two image paths"),
])
def test_a_bad_line_or_an_empty_list_names_the_list(tmp_path, text, message):
    pair_list = _write(tmp_path / "pairs.txt", text.encode())
    with pytest.raises(InputError) as error:
        list(read_pair_list(pair_list))
    assert str(error.value) == pair_list + message


def test_a_bad_line_on_stdin_is_named_stdin(pipe_into_stdin):
    pipe_into_stdin(b"a.png b.png\n\nc.png\n")
    with pytest.raises(InputError) as error:
        list(read_pair_list("-"))
    assert str(error.value) == "stdin:3: expected two image paths, found 1; quote paths that contain spaces"


def test_pairs_come_line_by_line_so_a_caller_reports_the_first_bad_line(tmp_path):
    pair_list = _write(tmp_path / "pairs.txt", b"a.png b.png\nc.png\n")
    pairs = read_pair_list(pair_list)
    assert next(pairs) == ListedPair(tmp_path / "a.png", tmp_path / "b.png", f"{pair_list}:1")
    with pytest.raises(InputError, match=":2: expected two image paths, found 1"):
        next(pairs)


def test_a_folder_or_a_missing_file_as_the_list_is_refused(tmp_path):
    with pytest.raises(InputError) as error:
        list(read_pair_list(str(tmp_path)))
    assert str(error.value) == f"--pairs {tmp_path} is a folder; give a text file with two image paths per line"
    with pytest.raises(InputError) as error:
        list(read_pair_list(str(tmp_path / "none.txt")))
    assert str(error.value) == f"--pairs {tmp_path / 'none.txt'} does not exist; check the path"


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd on this system")
def test_a_list_from_a_pipe_such_as_bash_process_substitution_is_relative_to_the_current_folder(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--pairs <(...)` is /dev/fd/63: its folder /dev/fd says nothing about the paths
    read_end, write_end = os.pipe()
    os.write(write_end, b"a.png sub/b.png\n")
    os.close(write_end)
    try:
        pairs = list(read_pair_list(f"/dev/fd/{read_end}"))
    finally:
        os.close(read_end)
    assert pairs == [ListedPair(Path("a.png"), Path("sub/b.png"), f"/dev/fd/{read_end}:1")]


@pytest.mark.parametrize(("name", "kind"), [("a.png", "an image"), ("B.JPG", "an image"), ("clip.mp4", "a video")])
def test_an_image_or_a_video_as_the_list_is_refused_saying_it_goes_among_the_inputs(tmp_path, name, kind):
    path = _write(tmp_path / name, b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(InputError) as error:
        list(read_pair_list(path))
    assert str(error.value) == (f"--pairs {path} is {kind}, not a list of pairs; give it among INPUTS, without --pairs "
                                "(--pairs takes a text file with two image paths per line)")


@pytest.mark.parametrize(("name", "data"), [
    ("photo.raw", b"II*\x00\x08\x00\x00\x00" + bytes(range(256))),  # a camera raw: TIFF-like, NULs in its header
    ("some.bin", b"ab\x00cd ef\x00gh\n"),  # two 'paths' on a line: read as text, a garbled 'ab\x00cd does not exist'
    ("pairs.txt", "a.png b.png\n".encode("utf-16-le")),  # UTF-16 without its BOM
], ids=["camera-raw", "nul-in-a-line", "utf-16-without-bom"])
def test_a_binary_file_as_the_list_is_refused_saying_it_is_not_text(tmp_path, name, data):
    path = _write(tmp_path / name, data)
    with pytest.raises(InputError) as error:
        list(read_image_pairs(path))
    assert str(error.value) == (f"{path} is binary, not text (it holds NUL bytes); give a text file with two image "
                                "paths per line (UTF-8, or UTF-16 with its BOM)")


def test_binary_data_on_stdin_as_the_list_is_refused_naming_stdin(pipe_into_stdin):
    pipe_into_stdin(b"\x00\x00\x01\x00 a.png b.png\n")
    with pytest.raises(InputError, match=r"^stdin is binary, not text \(it holds NUL bytes\); give a text file"):
        list(read_pair_list("-"))


def test_errors_at_puts_the_line_in_front_of_input_errors_only():
    with pytest.raises(InputError) as error, errors_at("pairs.txt:7"):
        raise InputError("b.png does not exist; check the path")
    assert str(error.value) == "pairs.txt:7: b.png does not exist; check the path"
    assert error.value.__cause__ is None and error.value.__suppress_context__
    with pytest.raises(ValueError, match="^other$"), errors_at("pairs.txt:7"):
        raise ValueError("other")
    with errors_at("pairs.txt:7"):
        pass


@pytest.mark.parametrize(("line", "message"), [
    ("a.png nope.png", "{folder}/nope.png does not exist; check the path"),
    ("nope.jpg b.png", "{folder}/nope.jpg does not exist; check the path"),
    ("a.png notes.txt", "{folder}/notes.txt is not an image file (.png .jpg .jpeg .ppm .pgm .bmp .tif .tiff .webp "
     ".gif)"),
    ("shots.png b.png", "{folder}/shots.png is not an image file (.png .jpg .jpeg .ppm .pgm .bmp .tif .tiff .webp "
     ".gif)"),  # a folder
])
def test_image_pairs_come_only_once_both_paths_are_image_files(tmp_path, line, message):
    for name in ("a.png", "b.png", "C.PNG", "notes.txt"):
        _write(tmp_path / name, b"")  # only names and kinds of file are checked here, not what the images hold
    (tmp_path / "shots.png").mkdir()
    pair_list = _write(tmp_path / "pairs.txt", f"a.png C.PNG\n# a comment\n{line}\nb.png a.png\n".encode())
    pairs = read_image_pairs(pair_list)
    assert next(pairs) == ListedPair(tmp_path / "a.png", tmp_path / "C.PNG", f"{pair_list}:1")
    with pytest.raises(InputError) as error:
        next(pairs)
    assert str(error.value) == f"{pair_list}:3: " + message.format(folder=tmp_path)
    pair_list = _write(tmp_path / "pairs.txt", b"a.png C.PNG\nb.png a.png\n")
    assert [(pair.first.name, pair.second.name) for pair in read_image_pairs(pair_list)] == [
        ("a.png", "C.PNG"), ("b.png", "a.png")]


def test_a_leading_tilde_is_the_home_folder_as_in_a_shell_unless_quoted(tmp_path, monkeypatch):
    """`~/shots/a.png` was taken as the folder '~' next to the list, which does not exist."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    lines = (
        "~/shots/a.png\t~\n"
        "'~/a.png' \"~\"/b.png\n"  # quoted: a shell leaves ~ as it is
        "\\~/c.png x~/d.png\n"
        "~no-such-user-here/e.png ~/'f g.png'\n"  # an unknown user: left as it is, as by a shell
    )
    pair_list = _write(tmp_path / "lists" / "pairs.txt", lines.encode())
    folder = tmp_path / "lists"
    assert list(read_pair_list(pair_list)) == [
        ListedPair(home / "shots/a.png", home, f"{pair_list}:1"),
        ListedPair(folder / "~/a.png", folder / "~/b.png", f"{pair_list}:2"),
        ListedPair(folder / "~/c.png", folder / "x~/d.png", f"{pair_list}:3"),
        ListedPair(folder / "~no-such-user-here/e.png", home / "f g.png", f"{pair_list}:4"),
    ]
