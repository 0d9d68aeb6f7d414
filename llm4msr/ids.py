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

ID_RULE = "1-128 characters of [A-Za-z0-9._-] starting with a letter or digit (no '/', not '.' or '..')"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidIdError(ValueError):
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
