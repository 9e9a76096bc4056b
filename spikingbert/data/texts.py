"""Texts to classify, read one row at a time from a TSV or JSONL file or from standard input.

The format is decided by the content (the first non-empty line), not by the file's name:

* JSONL: the line is a JSON object; each line holds ``text`` and, for sentence pairs, ``text_pair``;
* a GLUE TSV: the line is a header naming a text column (``sentence``, ``sentence1``/``sentence2``,
  ``question``/``sentence``, ``question1``/``question2``, ``#1 String``/``#2 String``, ``text``/``text_pair``);
  the text (and pair) columns are read by name, the other columns (``index``, ``label``, ...) ignored;
* a plain TSV: one text a line, or a text and its pair separated by one tab.

Rows are yielded as they are read (`read_texts`), so memory does not grow with the input. A row without
a text (white space and control characters only), with a pair where the first row had none (or the other
way round), or of another layout is a `core.errors.DataError` naming the line.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

from spikingbert.core.errors import DataError, UsageError
from spikingbert.transformer.tokenization import is_blank

__all__ = ["TextRow", "read_texts"]

#: GLUE header columns that hold the text, the first one present wins, and the column of its pair.
TEXT_COLUMNS = ("sentence1", "question1", "#1 String", "question", "sentence", "text")
PAIR_COLUMNS = {"sentence1": "sentence2", "question1": "question2", "#1 String": "#2 String", "question": "sentence",
                "text": "text_pair"}


@dataclass(frozen=True)
class TextRow:
    """One input: its line number in the source, the text and its pair (None for a single text)."""

    line: int
    text: str
    pair: Optional[str]


def _header(line: str) -> Optional[Tuple[int, Optional[int]]]:
    """(text column, pair column or None) of a GLUE header line, None when ``line`` is not one."""
    names = line.rstrip("\r").split("\t")
    text = next((name for name in TEXT_COLUMNS if name in names), None)
    if text is None or len(names) < 2 and text != "text":
        return None
    pair = PAIR_COLUMNS.get(text)
    return names.index(text), names.index(pair) if pair in names else None


def _lines(source: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) of the non-empty lines of ``source`` (a path, or ``-``: standard input)."""
    stream: IO[str]
    if source == "-":
        stream = sys.stdin
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"--input {source}: no such file")
        stream = open(path, encoding="utf-8")  # noqa: SIM115 (closed below, also when the reader stops early)
    try:
        for number, line in enumerate(stream, 1):
            line = line.rstrip("\n")
            if line.strip():
                yield number, line
    except UnicodeDecodeError as err:
        raise DataError(f"{source} is not UTF-8 text ({err}); save it as UTF-8") from err
    finally:
        if stream is not sys.stdin:
            stream.close()


def read_texts(source: str) -> Iterator[TextRow]:
    """The rows of ``source`` (see the module docstring), one at a time."""
    name = "standard input" if source == "-" else source
    lines = _lines(source)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{name} holds no texts")
    number, line = first
    if _json_object(line):
        rows = (_jsonl_row(name, n, text) for n, text in _chain(first, lines))
    else:
        header = _header(line)
        rows = (_tsv_row(name, n, text, header) for n, text in (lines if header else _chain(first, lines)))
    pairs: Optional[bool] = None
    for row in rows:
        if pairs is None:
            pairs = row.pair is not None
        elif pairs != (row.pair is not None):
            raise DataError(f"{name} line {row.line}: some rows have a text pair and others not; give every row one, "
                            "or none")
        yield row
    if pairs is None:
        raise DataError(f"{name} holds no texts")


def _chain(first: Tuple[int, str], rest: Iterator[Tuple[int, str]]) -> Iterator[Tuple[int, str]]:
    yield first
    yield from rest


def _json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _checked(name: str, n: int, text: str, pair: Optional[str]) -> TextRow:
    if is_blank(text):
        raise DataError(f"{name} line {n}: the text is empty (white space or control characters only); fix the row")
    if pair is not None and is_blank(pair):
        raise DataError(f"{name} line {n}: the text pair is empty (white space or control characters only); fix the "
                        "row")
    return TextRow(n, text, pair)


def _tsv_row(name: str, n: int, line: str, header: Optional[Tuple[int, Optional[int]]]) -> TextRow:
    columns: List[str] = line.rstrip("\r").split("\t")
    if header is not None:
        text_col, pair_col = header
        needed = max(text_col, pair_col if pair_col is not None else 0)
        if len(columns) <= needed:
            raise DataError(f"{name} line {n}: {len(columns)} column(s), but the header names the text in column "
                            f"{needed + 1}; fix the row")
        return _checked(name, n, columns[text_col], columns[pair_col] if pair_col is not None else None)
    if len(columns) > 2:
        raise DataError(f"{name} line {n}: expected a text, or a text and its pair separated by one tab (got "
                        f"{len(columns)} columns); a GLUE file needs its header line (sentence, sentence1/sentence2, "
                        "question, ...), or write JSONL")
    return _checked(name, n, columns[0], columns[1] if len(columns) == 2 else None)


def _jsonl_row(name: str, n: int, line: str) -> TextRow:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise DataError(f"{name} line {n}: not JSON ({err}); fix the row") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{name} line {n}: expected an object with a non-empty \"text\" (and \"text_pair\" for "
                        "sentence pairs); fix the row")
    pair = record.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise DataError(f"{name} line {n}: \"text_pair\" must be a non-empty string; fix the row")
    return _checked(name, n, record["text"], pair)
