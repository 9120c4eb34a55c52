"""`--pairs LIST` of `flowcli estimate` and `flowcli stereo`, and a .txt stereo source of `flowcli adapt`: a text file
(or - for stdin) of image pairs, one a line.

Each line holds two paths, split as a shell would (quotes for spaces; a space or a tab between the two; an unquoted
leading ~ or ~user is that home folder); blank lines and lines starting with # are skipped; the text is UTF-8, or
UTF-16 with its BOM. Relative paths are relative to the folder of LIST, or to the current folder for - and for a LIST
that is a pipe, not a file (bash's <(...), /dev/fd/63). Errors name the line as LIST:LINE (stdin:LINE for -).
`read_image_pairs` gives the pairs whose two paths are image files that exist; what a pair becomes (an estimate input,
a stereo LEFT RIGHT pair) is each command's business, and `errors_at` puts the line in front of the command's own
errors about it. An image or a video given as LIST is refused (`refuse_media_as_list`), and so is any other binary
file (NUL bytes, without a UTF-16 BOM).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shlex
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flowcli.errors import InputError


@dataclass(frozen=True)
class ListedPair:
    first: Path
    second: Path
    where: str  # "LIST:LINE", for messages


@contextlib.contextmanager
def errors_at(where: str) -> Iterator[None]:
    """An InputError raised inside is raised again as '{where}: {message}'."""
    try:
        yield
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def read_pair_list(pair_list: str) -> Iterator[ListedPair]:
    """The pairs of --pairs LIST (a file, or - for stdin), in line order. Lines are parsed as they are taken, so a
    command that checks each pair's images before taking the next reports a list's first bad line, whatever is
    wrong with it; a list without a pair is an error once it is read through."""
    from flowcli.io.media import STDIN

    list_name, folder = ("stdin", Path()) if pair_list == STDIN else (pair_list, _start_of_relative_paths(pair_list))
    found = False
    for number, line in enumerate(_text(pair_list).split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{list_name}:{number}"
        try:
            words = _shell_words(line)  # a CR of a CRLF line end is whitespace to it
        except ValueError as error:  # an unterminated quote, a trailing backslash
            raise InputError(f"{where}: {str(error).lower()}; close the quote, or quote the path that holds a quote "
                             "or backslash") from None
        if len(words) != 2:
            raise InputError(f"{where}: expected two image paths, found {len(words)}; quote paths that contain spaces")
        found = True
        yield ListedPair(folder / words[0], folder / words[1], where)
    if not found:
        raise InputError(f"{list_name} has no pairs: give one pair per line, two image paths")


def _shell_words(line: str) -> list[str]:
    """`shlex.split(line)`, with a word's leading ~ or ~user expanded as a shell does: only where the text up to the
    word's first / holds no quote or backslash (`'~/a.png'` stays a path that starts with ~)."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""  # as shlex.split
    words, start = [], 0
    while True:
        while start < len(line) and line[start] in lexer.whitespace:
            start += 1
        word = lexer.get_token()  # ValueError for an unterminated quote, as shlex.split
        if word is None:
            return words
        end = lexer.instream.tell()
        tilde_prefix = re.match(r"[^/\s]*", line[start:end]).group()
        if tilde_prefix.startswith("~") and not any(mark in tilde_prefix for mark in "'\"\\"):
            word = os.path.expanduser(word)  # an unknown ~user stays as it is, as in a shell
        words.append(word)
        start = end


def read_image_pairs(pair_list: str) -> Iterator[ListedPair]:
    """The pairs of --pairs LIST as `read_pair_list` gives them, each only once both its paths are checked to be
    image files that exist; a path that is not is an InputError naming LIST:LINE."""
    from flowcli.io.media import IMAGE_SUFFIXES

    for pair in read_pair_list(pair_list):
        with errors_at(pair.where):
            for path in (pair.first, pair.second):
                if not path.exists():
                    raise InputError(f"{path} does not exist; check the path")
                if not (path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()):
                    raise InputError(f"{path} is not an image file ({' '.join(IMAGE_SUFFIXES)})")
        yield pair  # outside errors_at: the caller puts the line in front of its own errors


def refuse_media_as_list(pair_list: str) -> None:
    """InputError when --pairs is given an image or a video (`--pairs a.png b.png`, for two images as INPUTS), where
    reading it as a list would only say its binary 'line' does not hold two paths."""
    from flowcli.io.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffix = Path(pair_list).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        kind = "an image" if suffix in IMAGE_SUFFIXES else "a video"
        raise InputError(f"--pairs {pair_list} is {kind}, not a list of pairs; give it among INPUTS, without --pairs "
                         "(--pairs takes a text file with two image paths per line)")


def _start_of_relative_paths(pair_list: str) -> Path:
    """The folder of LIST; the current folder when LIST is a pipe (bash's <(...) is /dev/fd/63), as for -."""
    path = Path(pair_list)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError:  # missing or unreadable: _text says so
        return path.parent
    return path.parent if regular else Path()


def _text(pair_list: str) -> str:
    from flowcli.io.media import STDIN

    refuse_media_as_list(pair_list)
    if pair_list == STDIN:
        if sys.stdin is None or sys.stdin.isatty():  # typed alone: an error, not a wait for keystrokes
            raise InputError("--pairs - reads the list from stdin, but nothing is piped in; pipe one in, or give "
                             "the list's file: --pairs pairs.txt")
        data = getattr(sys.stdin, "buffer", sys.stdin).read()
    else:
        path = Path(pair_list)
        if path.is_dir():
            raise InputError(f"--pairs {pair_list} is a folder; give a text file with two image paths per line")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"--pairs {pair_list} does not exist; check the path") from None
        except OSError as error:
            raise InputError(f"cannot read --pairs {pair_list}: {error.strerror}") from None
    if isinstance(data, str):
        return data
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # what Windows PowerShell 5's > writes
        return data.decode("utf-16", errors="replace")
    if b"\0" in data:  # a binary file (photo.raw): read as lines, it gives a garbled 'does not exist' or 'found N'
        list_name = "stdin" if pair_list == STDIN else pair_list
        raise InputError(f"{list_name} is binary, not text (it holds NUL bytes); give a text file with two image "
                         "paths per line (UTF-8, or UTF-16 with its BOM)")
    # undecodable bytes become the file-name bytes they stand for, as Python does for file names
    return data.decode("utf-8-sig", errors="surrogateescape")
