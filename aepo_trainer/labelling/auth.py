"""Who may label: per-labeller tokens, read from a file or an environment variable, checked in constant time.

`--auth FILE` reads one labeller per line, `name:token` (blank lines and `#` comments ignored); `--auth env:VAR` reads
the same entries from the variable, separated by commas or newlines. A token is a secret: it is never logged, never
put in a URL (the page's login form POSTs it), never stored in the browser (the sign-in cookie holds an HMAC of a fixed
message under the token: it proves the token was known, survives a restart of the page, and reveals nothing), and
never echoed in an error message — errors name the line, not its content.

Make tokens with `python -c "import secrets; print(secrets.token_urlsafe(24))"`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

__all__ = ["LabellerTokens", "load_tokens"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_TOKEN_LENGTH = 12


class LabellerTokens:
    """`{name: token}` with a constant-time lookup from a presented token to its labeller."""

    def __init__(self, tokens: dict[str, str]):
        if not tokens:
            raise ValueError("no labeller tokens given")
        seen: set[str] = set()
        for name, token in tokens.items():
            if not _NAME.match(name):
                raise ValueError(
                    f"labeller name {name!r} is invalid: use letters, digits and _ . @ - (at most 64 characters)"
                )
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"the token of labeller {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
            if token in seen:
                raise ValueError(f"the token of labeller {name!r} is also another labeller's token")
            seen.add(token)
        self._tokens = {name: token.encode("utf-8") for name, token in tokens.items()}
        self._sessions = {
            name: hmac.new(token, b"aepo-label session", hashlib.sha256).hexdigest().encode("ascii")
            for name, token in self._tokens.items()
        }

    @property
    def names(self) -> list[str]:
        return sorted(self._tokens)

    def labeller(self, token: str | None) -> str | None:
        """The labeller whose token this is, or None. Every token is compared (no early exit on a match)."""
        return _find(self._tokens, token)

    def session(self, name: str) -> str:
        """The sign-in cookie value of labeller `name` (an HMAC under their token; not the token)."""
        return self._sessions[name].decode("ascii")

    def labeller_of_session(self, value: str | None) -> str | None:
        """The labeller whose sign-in cookie this is, or None."""
        return _find(self._sessions, value)

    def __repr__(self) -> str:  # never the tokens
        return f"LabellerTokens(names={self.names})"


def _find(secrets: dict[str, bytes], presented: str | None) -> str | None:
    if not presented:
        return None
    value = presented.encode("utf-8")
    found = None
    for name, expected in secrets.items():
        if hmac.compare_digest(value, expected):
            found = name
    return found


def load_tokens(source: str) -> LabellerTokens:
    """Tokens from `source`: a file path, or `env:VARIABLE`. Raises ValueError naming the file/variable and line."""
    if source.startswith("env:"):
        variable = source[4:]
        text = os.environ.get(variable)
        if text is None:
            raise ValueError(f"--auth {source}: the environment variable {variable} is not set")
        entries = [e for line in text.splitlines() for e in line.split(",")]
        where = f"environment variable {variable}, entry"
    else:
        try:
            with open(source, encoding="utf-8") as f:
                entries = f.read().splitlines()
        except OSError as error:
            raise ValueError(f"--auth {source}: cannot read the token file ({error.strerror})") from None
        where = f"{source}, line"
    tokens: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ValueError(f"{where} {number}: expected `name:token`")
        if name in tokens:
            raise ValueError(f"{where} {number}: labeller {name!r} is listed twice")
        tokens[name] = token
    try:
        return LabellerTokens(tokens)
    except ValueError as error:
        raise ValueError(f"--auth {source}: {error}") from None
