"""Read HMGET replies of fixed-size values straight from the socket into one numpy buffer.

A 1000-user read returns ~0.5 MiB as 1000 bulk strings. Parsing them into 1000 Python bytes
objects and joining them again costs more client CPU than decoding the vectors. In the steady
state every value is present and has the current version's length, so the replies have a byte
layout known in advance: per command `*n\\r\\n`, then n times `$size\\r\\n<value>\\r\\n`. This
module receives into one buffer, checks every header and item prefix as the bytes arrive, and
returns the values as zero-copy numpy views. At the first byte that deviates (a missing value
`$-1`, a value of another length, an error reply) everything received so far goes to hiredis,
which parses the rest the usual way, so an unexpected reply is never waited for past its end.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import numpy as np


class ReplyError(Exception):
    """The server answered a read command with an error (wrong type, no auth, ...)."""


@dataclass
class FixedLayout:
    """Where every header and value of the expected replies starts in the receive buffer."""

    counts: list[int]
    size: int

    def __post_init__(self) -> None:
        self.prefix = b"$%d\r\n" % self.size
        self.stride = len(self.prefix) + self.size + 2
        self.headers = [b"*%d\r\n" % n for n in self.counts]
        starts, items, pos = [], [], 0
        for head, n in zip(self.headers, self.counts, strict=True):
            starts.append(pos)
            pos += len(head)
            items.append(pos + self.stride * np.arange(n, dtype=np.int64))
            pos += self.stride * n
        self.starts = starts  # offset of each command's `*n` header
        self.items = np.concatenate(items) if items else np.zeros(0, np.int64)  # offset of each `$size`
        self.total = pos
        self._prefix_arr = np.frombuffer(self.prefix, np.uint8)
        self._prefix_cols = np.arange(len(self.prefix), dtype=np.int64)

    def check(self, buf: np.ndarray, done_items: int, done_heads: int, got: int) -> tuple[int, int, bool]:
        """Check the item prefixes and command headers received in buf[:got] and not checked yet;
        returns (items fully checked, headers fully checked, layout still as expected).

        A prefix or header only partly received is compared as far as it goes: a reply that ends
        early (the last value missing: `$-1\r\n` is shorter than `$size\r\n`) differs within its
        first two bytes, so the caller never blocks waiting for bytes that will not come."""
        plen = len(self.prefix)
        upto = max(done_items, int(np.searchsorted(self.items, got - plen, side="right")))
        if upto > done_items:
            seen = buf[self.items[done_items:upto, None] + self._prefix_cols]
            if not (seen == self._prefix_arr).all():
                return done_items, done_heads, False
        if upto < len(self.items) and self.items[upto] < got:  # a prefix partly received
            start = int(self.items[upto])
            if buf[start:got].tobytes() != self.prefix[: got - start]:
                return upto, done_heads, False
        while done_heads < len(self.starts):
            start, head = self.starts[done_heads], self.headers[done_heads]
            if start >= got:
                break
            end = min(start + len(head), got)
            if buf[start:end].tobytes() != head[: end - start]:
                return upto, done_heads, False
            if end < start + len(head):
                break
            done_heads += 1
        return upto, done_heads, True

    def values(self, buf: np.ndarray) -> list[np.ndarray]:
        """Per command: its n values as an (n,) array of opaque `size`-byte records (views)."""
        rec = np.dtype([("pre", f"V{len(self.prefix)}"), ("val", f"V{self.size}"), ("post", "V2")])
        out = []
        for start, head, n in zip(self.starts, self.headers, self.counts, strict=True):
            out.append(np.frombuffer(buf, dtype=rec, count=n, offset=start + len(head))["val"])
        return out


def read_values(
    sock: socket.socket, counts: Sequence[int], size: int
) -> tuple[list[np.ndarray] | None, list[list[Any]] | None]:
    """Receive the replies of len(counts) HMGETs already sent on `sock` (command j asked for
    counts[j] fields). Returns (per-command value views, None) when every value is present with
    length `size`, else (None, per-command lists of bytes-or-None as hiredis parsed them).

    Raises TimeoutError (socket timeout), ConnectionError (closed or reset) or ReplyError."""
    layout = FixedLayout(list(counts), size)
    buf = np.empty(layout.total, dtype=np.uint8)
    view = memoryview(buf)
    got = done_items = done_heads = 0
    ok = True
    while got < layout.total:
        k = _recv_into(sock, view[got:])
        got += k
        done_items, done_heads, ok = layout.check(buf, done_items, done_heads, got)
        if not ok:
            break
    if ok:
        return layout.values(buf), None
    return None, _parse_rest(sock, bytes(view[:got]), len(layout.counts))


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        k = sock.recv_into(view)
    except TimeoutError:
        raise
    except OSError as exc:
        raise ConnectionError(f"error reading from redis: {exc}") from exc
    if k == 0:
        raise ConnectionError("redis closed the connection")
    return k


def _parse_rest(sock: socket.socket, received: bytes, n_replies: int) -> list[list[Any]]:
    """Parse `received` and whatever else belongs to the n replies with hiredis."""
    reader = hiredis.Reader()
    reader.feed(received)
    replies: list[Any] = []
    scratch = bytearray(65536)
    while len(replies) < n_replies:
        reply = reader.gets()
        if reply is False:
            k = _recv_into(sock, memoryview(scratch))
            reader.feed(scratch, 0, k)
            continue
        replies.append(reply)
    errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
    if errors:
        raise ReplyError(str(errors[0]))
    return replies
