"""Binary value format shared by every online-store backend.

One value = a 24-byte little-endian header + the vector payload:

    offset size field
    0      2    magic        b"KV"
    2      1    format       FORMAT_VERSION (1)
    3      1    dtype code   1 = float16, 2 = float32
    4      4    dimension    uint32
    8      8    version hash uint64: first 8 bytes of sha256(version id), little-endian
    16     8    generated_at int64 unix seconds (when the vector was produced)
    24     d*s  payload      `dimension` values of the dtype

Redis stores one value per hash field; the local store stores fixed-size records of the same
bytes in one file. Decoding is numpy (a structured view, one cast to float32); any value whose length, magic, format, dtype, dimension or version differs from the
current version's metadata, or whose payload is not finite, is *malformed* (reported missing).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"KV"
FORMAT_VERSION = 1
HEADER_SIZE = 24
DTYPE_CODES = {"float16": 1, "float32": 2}
NP_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def version_hash(version: str) -> int:
    """The 64-bit tag a value carries so a reader can tell which version wrote it."""
    return int.from_bytes(hashlib.sha256(version.encode("utf-8")).digest()[:8], "little")


def record_dtype(dimension: int, dtype: str) -> np.dtype:
    """numpy structured dtype of one value (header + payload), packed, little-endian."""
    if dtype not in NP_DTYPES:
        raise ValueError(f"value dtype {dtype!r} not supported, expected one of {list(NP_DTYPES)}")
    return np.dtype(
        [
            ("magic", "S2"),
            ("fmt", "u1"),
            ("dtype", "u1"),
            ("dim", "<u4"),
            ("ver", "<u8"),
            ("gen", "<i8"),
            ("vec", NP_DTYPES[dtype], (int(dimension),)),
        ]
    )


@functools.lru_cache(maxsize=64)
def _cached_dtype(dimension: int, dtype: str) -> np.dtype:
    return record_dtype(dimension, dtype)


@dataclass(frozen=True)
class Layout:  # noqa: B903
    """What a reader expects of every value of one version."""

    version: str
    dimension: int
    dtype: str

    @property
    def rec(self) -> np.dtype:
        return _cached_dtype(self.dimension, self.dtype)

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.dimension * NP_DTYPES[self.dtype].itemsize

    @functools.cached_property
    def vhash(self) -> int:
        return version_hash(self.version)


def encode(layout: Layout, vectors: np.ndarray, generated_at: np.ndarray) -> np.ndarray:
    """(n, dim) vectors + (n,) unix seconds -> structured array of n records (use .tobytes())."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != layout.dimension:
        raise ValueError(f"vectors have shape {vectors.shape}, expected (n, {layout.dimension})")
    recs = np.empty(vectors.shape[0], dtype=layout.rec)
    recs["magic"] = MAGIC
    recs["fmt"] = FORMAT_VERSION
    recs["dtype"] = DTYPE_CODES[layout.dtype]
    recs["dim"] = layout.dimension
    recs["ver"] = layout.vhash
    recs["gen"] = np.asarray(generated_at, dtype=np.int64)
    recs["vec"] = vectors
    return recs


def split_records(recs: np.ndarray) -> list[bytes]:
    """Records -> one bytes object per value (for key/value backends)."""
    buf = recs.tobytes()
    size = recs.dtype.itemsize
    return [buf[i : i + size] for i in range(0, len(buf), size)]


@dataclass
class Decoded:
    vectors: np.ndarray  # float32 (n, dim), zeros where not ok
    found: np.ndarray  # bool (n,)
    missing: int
    stale: int
    malformed: int


def decode_records(
    layout: Layout, recs: np.ndarray, present: np.ndarray, max_age_seconds: int | None, now: float
) -> Decoded:
    """Check and decode the records of the rows where `present` is True (one record per such row,
    in row order). Wrong magic, format, dtype, dimension, version or a non-finite payload is
    malformed; older than `max_age_seconds` is stale; both read as zeros, found False."""
    n = len(present)
    ok = (
        (recs["magic"] == MAGIC)
        & (recs["fmt"] == FORMAT_VERSION)
        & (recs["dtype"] == DTYPE_CODES[layout.dtype])
        & (recs["dim"] == layout.dimension)
        & (recs["ver"] == np.uint64(layout.vhash))
    )
    vecs = recs["vec"].astype(np.float32)
    ok &= np.isfinite(vecs).all(axis=1)
    stale = ok & (recs["gen"] < now - max_age_seconds) if max_age_seconds is not None else ok & False
    use = ok & ~stale
    if len(recs) == n:  # every row present (the usual case): no scatter
        out, found = vecs, use
        if not use.all():
            out[~use] = 0.0
    else:
        out = np.zeros((n, layout.dimension), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        rows = np.flatnonzero(present)[use]
        out[rows], found[rows] = vecs[use], True
    return Decoded(out, found, n - len(recs), int(stale.sum()), int((~ok).sum()))


def decode_values(
    layout: Layout, values: list[bytes | None], max_age_seconds: int | None, now: float
) -> Decoded:
    """Decode raw values in request order (None = absent; another length = malformed). Never raises."""
    size = layout.size
    if None not in values and set(map(len, values)) <= {size}:  # the usual case: all present, C loops
        recs = np.frombuffer(b"".join(values), layout.rec)  # type: ignore[arg-type]
        return decode_records(layout, recs, np.ones(len(values), dtype=bool), max_age_seconds, now)
    present = np.fromiter((v is not None and len(v) == size for v in values), dtype=bool, count=len(values))
    recs = np.frombuffer(b"".join(v for v, p in zip(values, present.tolist(), strict=True) if p), layout.rec)
    dec = decode_records(layout, recs, present, max_age_seconds, now)
    wrong_length = sum(1 for v in values if v is not None) - len(recs)
    dec.missing -= wrong_length
    dec.malformed += wrong_length
    return dec
