"""Readers for delimited text and JSON Lines that fail with the file, line and field.

The fast path hands the whole file to pandas' C parser; only when the result is wrong (a field
that is not a number, a missing or extra field, a NaN) does a second, line-by-line pass find the
first offending line so the error can name it. Nothing here returns a silently wrong table.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Kind = Literal["int", "float", "str"]


@dataclass(frozen=True)
class Column:
    """One expected column of a delimited file.

    Attributes:
        name: column name in the returned DataFrame.
        kind: ``"int"`` (int64), ``"float"`` (float64, NaN refused) or ``"str"``.
    """

    name: str
    kind: Kind = "int"


def require_file(path: Path, what: str = "") -> Path:
    """Raise ``FileNotFoundError`` naming the missing file (and what it should contain)."""
    if not path.is_file():
        detail = f" ({what})" if what else ""
        raise FileNotFoundError(f"{path}: file not found{detail}")
    return path


def split_lines(text: str) -> list[str]:
    """Split on ``\n`` only (``str.splitlines`` also splits on U+0085 and U+2028 inside fields)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Decode a whole file; a bad byte is reported with its line number."""
    raw = require_file(path).read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: not valid {encoding} text (byte offset {err.start}); "
            "check the file's encoding"
        ) from None


def iter_jsonl(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file."""
    for lineno, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {lineno}: expected a JSON object")
        yield lineno, obj


def json_field(
    path: Path, lineno: int, obj: dict[str, Any], key: str, kind: type | tuple[type, ...]
) -> Any:
    """``obj[key]`` checked to be of ``kind``, else an error naming file, line and field."""
    if key not in obj:
        raise ValueError(f"{path}: line {lineno}: missing field {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{path}: line {lineno}: field {key!r} must be {names}, got {value!r}")
    return value


def read_delimited(
    path: Path,
    columns: Sequence[Column],
    *,
    sep: str,
    header: bool,
    encoding: str = "utf-8",
    source_sep: str | None = None,
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE,
) -> pd.DataFrame:
    """Read a delimited file whose rows have exactly ``len(columns)`` fields.

    Args:
        path: the file.
        columns: expected columns in file order.
        sep: single-character field separator used by the parser.
        header: the first line is a header and is skipped (check it with ``read_header``).
        encoding: text encoding (MovieLens files are latin-1).
        source_sep: a multi-character separator in the file (e.g. ``"::"``), replaced by ``sep``.
        quoting: ``csv`` quoting mode (QUOTE_NONE for files with stray quotes in titles).

    Returns:
        DataFrame with one column per ``Column``: int64, float64 or str.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the line and field of the first malformed row.
    """
    text = read_text(path, encoding)
    if not text.strip():
        raise ValueError(f"{path}: file is empty")
    if source_sep is not None:
        text = text.replace(source_sep, sep)
    names = [c.name for c in columns]
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=None,
            names=names,
            skiprows=1 if header else 0,
            skip_blank_lines=False,
            quoting=quoting,
            dtype={c.name: str for c in columns if c.kind == "str"},
            keep_default_na=False,
            na_values=[""],
            engine="c",
        )
    except (pd.errors.ParserError, ValueError):
        _raise_first_bad_line(path, text, sep, len(columns), header)
        raise  # unreachable: the scan above always raises when pandas could not parse
    first_line = 2 if header else 1
    _check_short_rows(path, text, frame, sep, first_line)
    return pd.DataFrame({c.name: _convert(path, frame[c.name], c, first_line) for c in columns})


def _raise_first_bad_line(path: Path, text: str, sep: str, width: int, header: bool) -> None:
    lines = split_lines(text)
    for lineno, line in enumerate(lines[1 if header else 0 :], start=2 if header else 1):
        seen = len(line.split(sep))
        if seen != width:
            raise ValueError(f"{path}: line {lineno}: expected {width} fields, found {seen}")
    raise ValueError(f"{path}: could not be parsed as a {width}-column table")


def _check_short_rows(
    path: Path, text: str, frame: pd.DataFrame, sep: str, first_line: int
) -> None:
    """A row with a missing value may be a row with too few fields: say so if it is."""
    missing = frame.isna().to_numpy().any(axis=1)
    if not missing.any():
        return
    lineno = first_line + int(np.argmax(missing))
    line = split_lines(text)[lineno - 1]
    found = len(line.split(sep)) if line else 0
    if found != frame.shape[1]:
        raise ValueError(f"{path}: line {lineno}: expected {frame.shape[1]} fields, found {found}")


def _convert(path: Path, values: pd.Series, column: Column, first_line: int) -> np.ndarray:
    """Check and convert one parsed column; errors name the first bad line."""
    if column.kind == "str":
        missing = values.isna().to_numpy()
        if missing.any():
            _raise_at(path, first_line, int(np.argmax(missing)), column.name, "is missing")
        return values.to_numpy(dtype=object).astype(str)
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numeric)
    if bad.any():
        row = int(np.argmax(bad))
        raw = values.iloc[row]
        what = "is missing" if pd.isna(raw) else f"is not a finite number: {raw!r}"
        _raise_at(path, first_line, row, column.name, what)
    if column.kind == "float":
        return numeric
    fractional = numeric != np.floor(numeric)
    if fractional.any():
        row = int(np.argmax(fractional))
        _raise_at(path, first_line, row, column.name, f"is not an integer: {values.iloc[row]!r}")
    return numeric.astype(np.int64)


def _raise_at(path: Path, first_line: int, row: int, field: str, what: str) -> None:
    raise ValueError(f"{path}: line {first_line + row}: field {field!r} {what}")


def read_header(path: Path, sep: str, encoding: str = "utf-8") -> list[str]:
    """The first line of a file split on ``sep`` (stripped), for header checks."""
    with require_file(path).open("rb") as handle:
        first = handle.readline()
    try:
        line = first.decode(encoding)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: line 1: not valid {encoding} text") from None
    return [name.strip() for name in line.rstrip("\r\n").split(sep)]


def check_header(path: Path, found: Sequence[str], allowed: Sequence[Sequence[str]]) -> None:
    """Raise unless ``found`` equals one of the ``allowed`` headers."""
    if [*found] not in [[*a] for a in allowed]:
        options = " or ".join(",".join(a) for a in allowed)
        raise ValueError(f"{path}: line 1: header {','.join(found)!r} is not {options}")


def read_fields(
    path: Path, width: int, sep: str, encoding: str = "utf-8"
) -> list[tuple[int, list[str]]]:
    """``(line_number, fields)`` of every non-blank line; each must have ``width`` fields."""
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(split_lines(read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != width:
            raise ValueError(f"{path}: line {lineno}: expected {width} fields, found {len(parts)}")
        rows.append((lineno, parts))
    return rows


def parse_int(path: Path, lineno: int, field: str, text: str) -> int:
    """``int(text)`` or an error naming file, line and field."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{path}: line {lineno}: field {field!r} is not an integer: {text!r}"
        ) from None
