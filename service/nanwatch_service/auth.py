"""Tokens, teams and roles: who is calling, and what that caller may see and do.

The tokens file (``NANWATCH_TOKENS_FILE``) is TOML, one ``[[tokens]]`` table per token::

    [[tokens]]
    name = "vision-ci"        # who: shown in the audit trail (a halt's sent_by), never the token itself
    team = "vision"           # "*" = every team (cluster operators, the Alertmanager webhook)
    role = "writer"           # reader < writer < operator < admin
    sha256 = "…"              # hex SHA-256 of the token; plain tokens are never stored

Each role includes the ones below it: a reader reads its team's runs, a writer also registers runs and
sends steps, an operator also halts them, an admin also deletes runs and sees every team. A token of team
``"*"`` sees every team with its role. The legacy ``NANWATCH_TOKEN`` is one more admin token of every team
(named ``NANWATCH_TOKEN``), and ``NANWATCH_WEBHOOK_TOKEN`` one operator token of every team (named
``NANWATCH_WEBHOOK_TOKEN``). With no token configured at all nobody is asked for one: every caller is
:data:`ANONYMOUS`, an admin of every team (a service on loopback: tests, demos, one laptop).

A presented token is hashed and compared with every known digest in constant time (``hmac.compare_digest``,
no early exit), so neither the answer's timing nor an error message says anything about the tokens. The
file is read again when its size, mtime or inode changes (checked at each lookup, one ``stat``), or on
request (SIGHUP); a file that no longer parses keeps the tokens read before, and says why in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

EVERY_TEAM: Final = "*"
TOKEN_KEYS: Final = ("name", "team", "role", "sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_log = logging.getLogger("nanwatch.service")


class Role(IntEnum):
    """What a token may do; each role includes the ones below it."""

    READER = 1
    WRITER = 2
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def named(cls, name: str) -> Role:
        """The role called ``name`` (``reader``, ``writer``, ``operator``, ``admin``)."""
        return cls[name.upper()]

    @property
    def label(self) -> str:
        """The role's name as the tokens file spells it."""
        return self.name.lower()


ROLE_NAMES: Final = tuple(role.label for role in Role)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the token's name (never the token), its team and its role."""

    name: str
    team: str
    role: Role

    @property
    def sees_every_team(self) -> bool:
        """Team ``"*"`` or an admin: every run is visible."""
        return self.team == EVERY_TEAM or self.role >= Role.ADMIN

    def can_see(self, team: str | None) -> bool:
        """Whether a run owned by ``team`` is visible to this caller."""
        return self.sees_every_team or team == self.team

    def owner_of_new_run(self, requested: str | None) -> str | None:
        """The team a run this caller registers belongs to: the token's team wins; a token of every team
        registers for the team the registration names (none when it names none)."""
        return requested if self.team == EVERY_TEAM else self.team


ANONYMOUS: Final = Caller("anonymous", EVERY_TEAM, Role.ADMIN)
"""Every caller when no token is configured."""


@dataclass(frozen=True)
class Token:
    """One known token: who it is, and the SHA-256 digest of its secret."""

    name: str
    team: str
    role: Role
    digest: bytes

    @property
    def caller(self) -> Caller:
        """The identity this token gives a request."""
        return Caller(self.name, self.team, self.role)


class TokensFileError(ValueError):
    """The tokens file cannot be read or does not follow the format; the message names the entry and key
    (never a value that could be a secret)."""


def digest_of(token: str) -> bytes:
    """SHA-256 of a token, as the tokens file stores it (in hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(text: str, source: str = "tokens file") -> list[Token]:
    """The tokens of a tokens file's text; :class:`TokensFileError` names what is wrong and where."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"{source}: not valid TOML ({exc})") from None
    unknown = set(document) - {"tokens"}
    if unknown:
        raise TokensFileError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected [[tokens]] tables")
    entries = document.get("tokens", [])
    if not isinstance(entries, list):
        raise TokensFileError(f"{source}: 'tokens' must be an array of tables ([[tokens]])")
    tokens = [_token(entry, f"{source}: tokens[{i}]") for i, entry in enumerate(entries)]
    _check_unique(tokens, source)
    return tokens


def _token(entry: Any, where: str) -> Token:
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected a table with {', '.join(TOKEN_KEYS)}")
    unknown = set(entry) - set(TOKEN_KEYS)
    if unknown:
        raise TokensFileError(f"{where}: unknown key(s) {sorted(unknown)}; a token has {', '.join(TOKEN_KEYS)}")
    for key in TOKEN_KEYS:
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise TokensFileError(f"{where}.{key}: required, a non-empty string")
    if entry["role"] not in ROLE_NAMES:
        raise TokensFileError(f"{where}.role: expected one of {', '.join(ROLE_NAMES)}")
    if not _HEX64.fullmatch(entry["sha256"]):
        raise TokensFileError(f"{where}.sha256: expected 64 lowercase hex digits (the token's SHA-256)")
    return Token(entry["name"], entry["team"], Role.named(entry["role"]), bytes.fromhex(entry["sha256"]))


def _check_unique(tokens: Sequence[Token], source: str) -> None:
    names = [token.name for token in tokens]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TokensFileError(f"{source}: token name(s) {twice} listed twice; each token needs its own name")
    if len({token.digest for token in tokens}) != len(tokens):
        raise TokensFileError(f"{source}: two entries have the same sha256; give each its own token")


def legacy_tokens(token: str | None, webhook_token: str | None) -> list[Token]:
    """``NANWATCH_TOKEN`` (an admin of every team) and ``NANWATCH_WEBHOOK_TOKEN`` (an operator of every
    team), as tokens named after their variables."""
    pairs = (("NANWATCH_TOKEN", token, Role.ADMIN), ("NANWATCH_WEBHOOK_TOKEN", webhook_token, Role.OPERATOR))
    return [Token(name, EVERY_TEAM, role, digest_of(secret)) for name, secret, role in pairs if secret]


class TokenBook:
    """The tokens the service accepts: the tokens file's (re-read when it changes) and the legacy ones."""

    def __init__(self, path: str | Path | None, extra: Sequence[Token] = ()) -> None:
        self.path = None if path is None else Path(path)
        self._extra = list(extra)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._reload_requested = False
        self._tokens: list[Token] = list(self._extra)
        if self.path is not None:
            self._signature = self._stat()
            self._tokens = self._read() + self._extra  # a broken file at start stops the service

    @property
    def required(self) -> bool:
        """Whether every call needs a token (a tokens file or a legacy token is configured)."""
        return self.path is not None or bool(self._extra)

    @property
    def names(self) -> list[str]:
        """The names of the tokens known now."""
        return [token.name for token in self._tokens]

    def request_reload(self) -> None:
        """Read the file again at the next lookup (what SIGHUP does; safe inside a signal handler)."""
        self._reload_requested = True

    def resolve(self, presented: str) -> Caller | None:
        """The caller a presented token stands for, or None when no known token matches."""
        self._refresh()
        wanted = digest_of(presented)
        found = None
        for token in self._tokens:  # every digest is compared: no early exit
            if hmac.compare_digest(token.digest, wanted):
                found = token
        return None if found is None else found.caller

    def _refresh(self) -> None:
        if self.path is None:
            return
        signature = self._stat()
        if signature == self._signature and not self._reload_requested:
            return
        with self._lock:
            self._reload_requested = False
            self._signature = signature
            try:
                tokens = self._read()
            except TokensFileError as exc:
                _log.warning("nanwatch: keeping the %d tokens read before: %s", len(self._tokens), exc)
                return
            self._tokens = tokens + self._extra
            _log.info("nanwatch: tokens file %s read: %d token(s)", self.path, len(tokens))

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _read(self) -> list[Token]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise TokensFileError(f"cannot read the tokens file {self.path}: {why}") from None
        return parse_tokens(text, str(self.path))


def add_token(path: str | Path, *, name: str, team: str, role: str) -> str:
    """Append a new token of ``name``, ``team`` and ``role`` to the tokens file (created when missing, mode
    0600) and return the token: the file keeps only its hash, so this is the one time it is seen. The file
    is replaced atomically, so a service reading it meanwhile sees the old or the new file, never half."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    token = "nw_" + secrets.token_urlsafe(32)
    entry = {"name": name, "team": team, "role": role, "sha256": digest_of(token).hex()}
    added = text + ("" if text.endswith("\n") else "\n") + "\n[[tokens]]\n"
    added += "".join(f"{key} = {json.dumps(value, ensure_ascii=False)}\n" for key, value in entry.items())
    parse_tokens(added, f"{path} with the new token")  # a duplicate name, a bad role: nothing is written
    _replace(path, added)
    return token


_HEADER = """# nanwatch tokens: one [[tokens]] table per token (name, team, role, sha256 of the token).
# Add one with: nanwatch tokens add --name NAME --team TEAM --role reader|writer|operator|admin --file THIS_FILE
"""


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
