"""The one rule for identifiers that become folder names or key parts (snapshot and version ids,
entity kinds, the Redis namespace).

Why strict: an id is joined onto a folder (`versions/<id>`, `staging/<id>`) or a key prefix. `..`
names the parent folder, so deleting "staging/.." deletes the whole store; `.` names the folder
itself; `/` escapes it; `*` or `?` in a Redis key prefix makes a SCAN pattern match other keys. So:
a fixed alphabet, a letter or digit first (no dots-only, hidden or option-like names), at most
128 characters. Every store and versioned folder checks ids with `check_id` before using them.
"""

from __future__ import annotations

import re

from llm4msr.errors import UserError

ID_RULE = "1-128 characters of [A-Za-z0-9._-] starting with a letter or digit (no '/', not '.' or '..')"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidIdError(UserError, ValueError):
    """An id that may not become a path component or key part."""


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: object, what: str, where: object = None, error: type[Exception] = InvalidIdError) -> str:
    """Return `value` if it is a valid id, else raise `error` naming where it came from (file, key
    or store), the value and the rule."""
    if is_valid_id(value):
        return str(value)
    place = f"{where}: " if where is not None else ""
    raise error(f"{place}{what} {value!r} is not valid: expected {ID_RULE}")


# ---------------------------------------------------------------------------------------------
# Entity ids sent by callers (user_id, scenario_id, item_ids) are looked up, never used as paths,
# so they may be any text; but only text: a NUL or a lone surrogate is not an id (the local store's
# numpy ids drop trailing NULs, so "u1\0" matched "u1"; Redis fields are UTF-8, which a lone
# surrogate is not, so it surfaced as a store error). Checked at the edge (serving), and the stores
# treat ids they cannot hold exactly as missing.
TEXT_ID_MAX = 256
TEXT_ID_RULE = (
    f"1-{TEXT_ID_MAX} printable characters (no NUL, control or format characters, line separators "
    "or lone surrogates)"
)


def text_id_problem(value: object) -> str | None:
    """What is wrong with `value` as an entity id sent by a caller (a phrase), or None."""
    if not isinstance(value, str):
        return f"is not text (a {type(value).__name__})"
    if not value:
        return "is empty"
    if len(value) > TEXT_ID_MAX:
        return f"has {len(value)} characters"
    if not value.isprintable():
        i, ch = next((i, c) for i, c in enumerate(value) if not c.isprintable())
        return f"has the non-printable character {ch!r} (U+{ord(ch):04X}) at position {i}"
    return None


def first_bad_text_id(values: list[str]) -> tuple[int, str] | None:
    """(index, problem) of the first id in `values` that breaks the rule, or None. One C-level pass
    over all ids joined in the usual case (a request carries up to max_candidates item ids)."""
    try:
        joined = "".join(values)
    except TypeError:  # not all text: the loop below names the first one
        joined = None
    if (
        joined is not None
        and "" not in values
        and max(map(len, values), default=0) <= TEXT_ID_MAX
        and _printable(joined)
    ):
        return None
    for i, v in enumerate(values):
        if (problem := text_id_problem(v)) is not None:
            return i, problem
    return None


_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def _printable(text: str) -> bool:
    """str.isprintable(), ~3x faster for ASCII (the usual ids): delete the printable bytes, is
    anything left?"""
    if text.isascii():
        return not text.encode("ascii").translate(None, _PRINTABLE_ASCII)
    return text.isprintable()


def describe_bad_text_id(field: str, value: object, problem: str) -> str:
    """The error message for a caller: which field, which value, what is expected."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return f"{field} {shown} is not a valid id: it {problem}; expected {TEXT_ID_RULE}"


def unkeyable(values: list[str]) -> list[int]:
    """Indices of ids a store cannot hold exactly: containing NUL, or not encodable as UTF-8 (lone
    surrogates). One pass over the joined ids when (as always in practice) there are none."""
    try:
        joined = "".join(values)
    except TypeError:  # ints or other non-text ids: compared as their text, like the stores do
        values = [str(v) for v in values]
        joined = "".join(values)
    if "\0" not in joined and (joined.isascii() or _utf8(joined)):
        return []
    return [i for i, v in enumerate(values) if "\0" in v or not _utf8(v)]


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
