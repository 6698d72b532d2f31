"""Reading a big JSON object member by member, and one array member element by element.

A Karpathy annotation file is one object whose ``images`` array holds every image and caption
(RSICD's is 30 MB; a million pairs with tokens is ~300 MB, several GB as Python objects).
:func:`iter_members` reads it with the standard library's own decoder, one element of that array
at a time, so ingest and export hold one image entry of it at once, not the document.

>>> import io, json
>>> text = '{"dataset": "rsicd", "images": [{"filename": "a.jpg"}, {"filename": "b.jpg"}], "n": 2}'
>>> [(key, list(value) if key == "images" else value) for key, value in iter_members(io.StringIO(text), "images")]
[('dataset', 'rsicd'), ('images', [{'filename': 'a.jpg'}, {'filename': 'b.jpg'}]), ('n', 2)]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_DELIMITERS = _WHITESPACE + ",]}"


class NotAnObjectError(ValueError):
    """The file's top-level JSON value is not an object."""


class DuplicateKeyError(ValueError):
    """A top-level key appears twice (``json.loads`` would keep the last value; a stream cannot)."""


class ArrayElements:
    """The elements of the streamed array member, decoded one at a time (iterate it once, in turn)."""

    def __init__(self, scanner: _Scanner):
        self._scanner = scanner
        self.done = False

    def __iter__(self) -> Iterator[Any]:
        scanner = self._scanner
        if scanner.peek() != "]":
            while True:
                yield scanner.value()
                if scanner.peek() == "]":
                    break
                scanner.take(",")
        scanner.take("]")
        self.done = True


def iter_members(handle: TextIO, array_key: str, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """The members of the top-level JSON object in ``handle``, in file order, as ``(key, value)``.

    The member ``array_key``, when its value is an array, comes as :class:`ArrayElements`, which
    must be iterated to its end before the next member is read; every other value is decoded whole.

    Open the file with ``newline=""``, so that line and column numbers count as ``json.loads``'s do.

    Raises:
        NotAnObjectError: the top level is not an object.
        DuplicateKeyError: a top-level key appears twice.
        json.JSONDecodeError: invalid JSON; its ``lineno`` and ``colno`` are the file's.
        UnicodeDecodeError: from ``handle``, for a file opened as UTF-8 that is not.
    """
    scanner = _Scanner(handle, chunk_chars)
    first = scanner.peek()
    if first == "":
        scanner.fail("Expecting value")
    if first == "\ufeff":
        scanner.fail("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    if first != "{":
        raise NotAnObjectError("the top level is not a JSON object")
    scanner.take("{")
    seen: set[str] = set()
    if scanner.peek() != "}":
        while True:
            if scanner.peek() != '"':
                scanner.fail("Expecting property name enclosed in double quotes")
            key = scanner.value()
            if key in seen:  # json.loads keeps the last; a stream has already passed the first on
                raise DuplicateKeyError(f"the top-level key {key!r} appears more than once")
            seen.add(key)
            scanner.take(":")
            if key == array_key and scanner.peek() == "[":
                scanner.take("[")
                elements = ArrayElements(scanner)
                yield key, elements
                if not elements.done:
                    raise RuntimeError(f"iterate the {array_key!r} elements to their end before the next member")
            else:
                yield key, scanner.value()
            if scanner.peek() == "}":
                break
            scanner.take(",")
    scanner.take("}")
    scanner.end()


class _Scanner:
    """A window on the text: decodes values at the cursor, reading more when one runs past its end."""

    def __init__(self, handle: TextIO, chunk_chars: int):
        self.handle = handle
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0  # cursor in self.text
        self.eof = False
        # Where self.text starts in the file, for error positions.
        self.line = 1
        self.line_start = 0  # file offset of the first character of the line self.text starts in
        self.offset = 0

    def _read(self) -> bool:
        """Append the next chunk (dropping what the cursor passed); False, and no change, at the end of the file."""
        if self.eof:
            return False
        # At least the size of what is kept, so a long value is re-decoded O(log) times, not O(n).
        chunk = self.handle.read(max(self.chunk_chars, len(self.text) - self.pos))
        if not chunk:
            self.eof = True
            return False
        passed = self.text[: self.pos]
        newlines = passed.count("\n")
        if newlines:
            self.line += newlines
            self.line_start = self.offset + passed.rfind("\n") + 1
        self.offset += self.pos
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text) or not self._read():
                return self.text[self.pos : self.pos + 1]

    def take(self, char: str) -> None:
        if self.peek() != char:
            self.fail(f"Expecting {char!r}" if char != "," else "Expecting ',' delimiter")
        self.pos += 1

    def end(self) -> None:
        if self.peek():
            self.fail("Extra data")

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:
                if self._read():  # the value may run past the window: read on and retry
                    continue
                self.fail(err.msg, err.pos)
            # A number may go on past the window ("-1" of "-1e-07"): a value that is not a string,
            # array or object counts only once a delimiter (or the end of the file) follows it.
            open_ended = self.text[self.pos] not in '"[{'
            if (end == len(self.text) or (open_ended and self.text[end] not in _DELIMITERS)) and self._read():
                continue
            self.pos = end
            return value

    def fail(self, message: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        before = self.text[:at]
        newlines = before.count("\n")
        line = self.line + newlines
        line_start = self.offset + before.rfind("\n") + 1 if newlines else self.line_start
        error = json.JSONDecodeError(message, "", 0)
        error.pos, error.lineno, error.colno = self.offset + at, line, self.offset + at - line_start + 1
        error.args = (f"{message}: line {error.lineno} column {error.colno} (char {error.pos})",)
        raise error
