"""Reading source files with errors that name the file, the column, the value and what was expected.

Every adapter reads through these helpers so bad input fails the same way everywhere: a
`DataError` (a ValueError, so the CLI exits with code 2) or a `FileNotFoundError`.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from feature_store.dataset import DataError
from llm4msr.errors import MissingInputError


def decode(path: Path) -> str:
    """File text as UTF-8, falling back to Latin-1 (the GroupLens files are Latin-1)."""
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_delimited(path: Path, separator: str, names: Sequence[str] | None = None) -> pl.DataFrame:
    """A delimited text file as an all-String DataFrame.

    `names`: the columns of a header-less file; None means the first line is the header.
    Multi-character separators (MovieLens-1M's "::") are supported. Quotes are not interpreted.
    """
    text = decode(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    sep = separator
    if len(separator) > 1:
        text = text.replace(separator, "\x1f")
        sep = "\x1f"
    try:
        df = pl.read_csv(
            io.StringIO(text),
            separator=sep,
            has_header=names is None,
            new_columns=list(names) if names else None,
            infer_schema=False,
            quote_char=None,
            truncate_ragged_lines=False,
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot be read as {separator!r}-separated text: {exc}") from exc
    if names is not None and df.width != len(names):
        raise DataError(
            f"{path}: expected {len(names)} {separator!r}-separated fields per line, found {df.width}"
        )
    if df.height == 0:
        raise DataError(f"{path}: file has a header but no rows")
    return df


def read_csv(path: Path) -> pl.DataFrame:
    """A CSV file with a header, all columns as strings (quotes honoured)."""
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        df = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from exc
    if df.height == 0:
        raise DataError(f"{path}: file has a header but no rows")
    return df


def require_columns(df: pl.DataFrame, path: Path | str, columns: Iterable[str]) -> None:
    """DataError naming the first missing column and the closest existing name."""
    for col in columns:
        if col not in df.columns:
            close = difflib.get_close_matches(col, df.columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{path}: missing column {col!r} (have {df.columns}){hint}")


def first_present(df: pl.DataFrame, path: Path | str, candidates: Sequence[str]) -> str:
    """The first of several accepted names for one column (e.g. 'overall' or 'rating')."""
    for col in candidates:
        if col in df.columns:
            return col
    raise DataError(f"{path}: missing column {' or '.join(repr(c) for c in candidates)} (have {df.columns})")


def _bad_value(df: pl.DataFrame, col: str, ok: pl.Series) -> tuple[int, object]:
    idx = int(ok.not_().arg_max())  # first False
    return idx, df[col][idx]


def to_int(
    df: pl.DataFrame, path: Path | str, col: str, dtype: pl.DataType | None = None, allow_float: bool = False
) -> pl.DataFrame:
    """Cast a string column to integers; DataError with the first offending value and its row."""
    dtype = dtype or pl.Int64()
    s = df[col].str.strip_chars()
    parsed = s.cast(pl.Float64, strict=False) if allow_float else s.cast(dtype, strict=False)
    ok = parsed.is_not_null()
    if allow_float:
        ok = ok & parsed.is_finite().fill_null(False)
    if not ok.all():
        idx, value = _bad_value(df, col, ok)
        raise DataError(
            f"{path}: column {col!r} has value {value!r} at data row {idx + 1}, expected an integer"
        )
    out = parsed.cast(dtype) if allow_float else parsed
    return df.with_columns(out.alias(col))


def check_labels(df: pl.DataFrame, path: Path | str, col: str) -> pl.DataFrame:
    """Labels must be 0 or 1 (as integers); returns the column cast to int8."""
    df = to_int(df, path, col)
    ok = df[col].is_in([0, 1])
    if not ok.all():
        idx, value = _bad_value(df, col, ok)
        raise DataError(f"{path}: column {col!r} has value {value!r} at data row {idx + 1}, expected 0 or 1")
    return df.with_columns(pl.col(col).cast(pl.Int8))


def check_unique(df: pl.DataFrame, path: Path | str, key: str) -> None:
    dup = df.filter(pl.col(key).is_duplicated())[key]
    if dup.len():
        raise DataError(f"{path}: duplicate key {dup[0]!r} in column {key!r} (keys must be unique)")


def check_no_nulls(df: pl.DataFrame, path: Path | str, columns: Iterable[str]) -> None:
    for col in columns:
        bad = df[col].is_null() | (df[col].cast(pl.String).str.strip_chars() == "")
        if bad.any():
            raise DataError(
                f"{path}: column {col!r} is empty at data row {int(bad.arg_max()) + 1}, expected a value"
            )


def check_known(df: pl.DataFrame, path: Path | str, col: str, known: Iterable[str], what: str) -> None:
    """Every value of `col` must be in `known` (e.g. scenario ids, item ids of the item file)."""
    known = list(known)
    bad = df.filter(~pl.col(col).is_in(known))
    if bad.height:
        shown = known if len(known) <= 10 else f"{len(known)} known values"
        raise DataError(
            f"{path}: column {col!r} has value {bad[col][0]!r}, which is not a known {what} ({shown})"
        )
