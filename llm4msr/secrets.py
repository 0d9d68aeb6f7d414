"""Passwords in URLs (`store.url: redis://:pw@host:6379/0`) are never printed or persisted.

Why one helper: the configuration is printed (`llm4msr config show`), written into every training
run (`config.yaml`), passed to Prefect flows and tasks as parameters (stored by the Prefect
server) and logged; a password inside a URL would end up in all of them. Everything that prints
or persists a configuration or a URL passes it through `redact`, which replaces the password with
`***` and keeps the rest (scheme, user, host, port, database).

A URL with a redacted password stays usable: a store opened with `redis://:***@host/0` takes the
password from the environment variable named by `store.password_env` (the preferred way to give
it in the first place). `export_password` moves a password out of a URL into that variable, for
code that hands the URL on (the flows).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

REDACTED = "***"
# scheme://netloc as URL parsers (and redis-py) split it: the netloc ends at '/', '?' or '#';
# its userinfo is everything before the netloc's last '@'.
_URL = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<netloc>[^\s/?#]*)")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd|ssl_password)=)[^&#\s]*")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#\s]*")  # the one redis-py authenticates with


def _redact_netloc(m: re.Match[str]) -> str:
    userinfo, at, host = m.group("netloc").rpartition("@")
    if not at or ":" not in userinfo:
        return m.group(0)
    user = userinfo.split(":", 1)[0]
    return f"{m.group('scheme')}{user}:{REDACTED}@{host}"


def redact(text: str) -> str:
    """`text` with the password of every URL in it (userinfo or a `password=` query parameter)
    replaced by `***`; text without URLs comes back unchanged."""
    if "://" not in text:
        return text
    return _QUERY_SECRET.sub(rf"\g<key>{REDACTED}", _URL.sub(_redact_netloc, text))


def redact_tree(obj: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, strings) with `redact` applied to every string."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_tree(v) for v in obj]
    return obj


def split_password(url: str) -> tuple[str, str | None, bool]:
    """(the URL without its password, the password (percent-decoded) or None, whether the URL
    carried a redacted one). The user name, if any, stays in the URL."""
    password: str | None = None
    redacted = False

    def strip(m: re.Match[str]) -> str:
        nonlocal password, redacted
        userinfo, at, host = m.group("netloc").rpartition("@")
        if not at or ":" not in userinfo:
            return m.group(0)
        user, secret = userinfo.split(":", 1)
        if secret == REDACTED:
            redacted = True
        elif secret:
            password = unquote(secret)
        return f"{m.group('scheme')}{user + '@' if user else ''}{host}"

    def strip_query(q: re.Match[str]) -> str:
        nonlocal password, redacted
        value = q.group(0)[len(q.group("key")) :]
        if value == REDACTED:
            redacted = True
        else:
            password = unquote(value)
        return q.group("key")[0]  # keep the separator; fixed up below

    m = _URL.match(url)
    if m is None:
        return url, None, False
    out = strip(m) + _QUERY_PASSWORD.sub(strip_query, url[m.end() :])
    out = re.sub(r"\?&+", "?", re.sub(r"&{2,}", "&", out)).rstrip("?&")
    return out, password, redacted


def export_password(url: str, env_var: str) -> str:
    """Move the password of `url` (if any) into the environment variable `env_var` of this process
    (and of the processes it starts) and return the URL with `***` in its place, which the store
    resolves from `env_var` again. For URLs handed on as parameters that are recorded."""
    _, password, _ = split_password(url)
    if password is not None:
        os.environ[env_var] = password
    return redact(url)
