"""Who may label: per-labeller tokens and roles, read from a file or an environment variable, checked in constant time.

`--auth FILE` reads one labeller per line, `name:token` or `name:token:role` (role `labeller`, the default, or
`reviewer`; blank lines and `#` comments ignored); `--auth env:VAR` reads the same entries from the variable,
separated by commas or newlines. A token is a secret: it is never logged, never put in a URL (the page's login form
POSTs it), never stored in the browser (sign-in opens a server-side session, `sessions.py`), and never echoed in an
error message — errors name the line, not its content. A token file readable by other users of the machine is
accepted with a warning (`chmod 600` it).

The file is re-read when it changes (checked at each request, by modification time and size) or on `SIGHUP`
(`aepo label` installs the handler): a labeller removed from it is signed out at their next request. A file that
no longer parses keeps the previous tokens (and logs why).

Make tokens with `python -c "import secrets; print(secrets.token_urlsafe(24))"`.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
import threading

from aepo_trainer._utils.file_stamp import file_stamp
from aepo_trainer.choices import LABELLER_ROLES

logger = logging.getLogger(__name__)

__all__ = ["LabellerTokens", "load_tokens"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_TOKEN_LENGTH = 12


class LabellerTokens:
    """`{name: token}` (and `{name: role}`) with a constant-time lookup from a presented token to its labeller.

    Args:
        tokens: `{name: token}`.
        roles: `{name: role}` (`choices.LABELLER_ROLES`; missing names are labellers).
        source: the token file to follow (`refresh`), or None (fixed tokens, e.g. from an environment variable).
    """

    def __init__(self, tokens: dict[str, str], roles: dict[str, str] | None = None, source: str | None = None):
        self._set(tokens, roles or {})
        self.source = source
        self._stamp = file_stamp(source) if source else None
        self._lock = threading.Lock()

    def _set(self, tokens: dict[str, str], roles: dict[str, str]) -> None:
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
        for name, role in roles.items():
            if role not in LABELLER_ROLES:
                raise ValueError(f"the role of labeller {name!r} must be one of {', '.join(LABELLER_ROLES)}")
        self._tokens = {name: token.encode("utf-8") for name, token in tokens.items()}
        self._roles = {name: roles.get(name, "labeller") for name in tokens}

    @property
    def names(self) -> list[str]:
        return sorted(self._tokens)

    def role(self, name: str) -> str | None:
        """`labeller`, `reviewer`, or None for a name not (or no longer) in the file."""
        return self._roles.get(name)

    def labeller(self, token: str | None) -> str | None:
        """The labeller whose token this is, or None. Every token is compared (no early exit on a match)."""
        if not token:
            return None
        value = token.encode("utf-8")
        found = None
        for name, expected in self._tokens.items():
            if hmac.compare_digest(value, expected):
                found = name
        return found

    def refresh(self, force: bool = False) -> list[str]:
        """Re-read the token file if it changed (or `force`); returns the names it no longer lists or lists with a new
        token (a rotated token ends the sessions opened with the old one)."""
        if self.source is None:
            return []
        with self._lock:
            stamp = file_stamp(self.source)
            if not force and stamp == self._stamp:
                return []
            self._stamp = stamp
            try:
                fresh = load_tokens(self.source)
            except ValueError as error:
                logger.error(
                    "labelling page: the token file changed but cannot be used, keeping the old one: %s", error
                )
                return []
            removed = sorted(name for name, token in self._tokens.items() if fresh._tokens.get(name) != token)
            self._tokens, self._roles = fresh._tokens, fresh._roles
        logger.warning(
            "labelling page: re-read %s (%d labeller(s)%s)",
            self.source,
            len(self._tokens),
            f"; removed or given a new token: {', '.join(removed)}" if removed else "",
        )
        return removed

    def __repr__(self) -> str:  # never the tokens
        return f"LabellerTokens(names={self.names})"


def load_tokens(source: str) -> LabellerTokens:
    """Tokens from `source`: a file path (followed for changes), or `env:VARIABLE`. Raises ValueError naming the
    file/variable and line; warns (log) when the file is readable by other users."""
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
                mode = os.fstat(f.fileno()).st_mode
                entries = f.read().splitlines()
        except OSError as error:
            raise ValueError(f"--auth {source}: cannot read the token file ({error.strerror})") from None
        if mode & (stat.S_IROTH | stat.S_IRGRP):
            logger.warning(
                "labelling page: the token file %s is readable by other users of this machine (mode %s): "
                "run `chmod 600 %s`",
                source,
                oct(mode & 0o777),
                source,
            )
        where = f"{source}, line"
    tokens: dict[str, str] = {}
    roles: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        head, colon, role = token.rpartition(":")
        if colon and role.strip() in LABELLER_ROLES:
            token, roles[name] = head.strip(), role.strip()
        if not sep or not name or not token:
            raise ValueError(f"{where} {number}: expected `name:token` or `name:token:role`")
        if name in tokens:
            raise ValueError(f"{where} {number}: labeller {name!r} is listed twice")
        tokens[name] = token
    try:
        return LabellerTokens(tokens, roles, source=None if source.startswith("env:") else source)
    except ValueError as error:
        raise ValueError(f"--auth {source}: {error}") from None
