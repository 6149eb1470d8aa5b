"""The security server's admin API keys: several keys, each with roles, managed with ``korpu ss api-key``.

Roles (a key holds one or more):

``admin``
    everything: status, the audit endpoints, and whatever later admin endpoints need;
``auditor``
    the message log's audit endpoints only (``/api/v1/audit/…``) — a data-protection officer sees the evidence,
    not the server's operations, and every person query they make is itself logged;
``observer``
    read-only operations: ``/api/v1/status`` (monitoring), nothing from the message log.

:func:`require` says which role an endpoint needs; an ``admin`` key satisfies every requirement.  Open endpoints
(``/healthz``, ``/openapi.json``) do not call it.

Storage (in the state directory):

* ``admin-api-key.sha256`` — the key ``korpu ss init`` made; it stays valid as key id ``init`` with role
  ``admin``, so existing set-ups keep working.  It can be revoked like any other key (the revocation is recorded
  in ``admin-keys.json``; the file itself stays because the runtime reads it at start);
* ``admin-keys.json`` (mode 0600, replaced atomically) — every other key: id, label, roles, created, revoked and
  the SHA-256 of its secret.  Secrets are ``<key id>.<43 random URL-safe characters>`` and are shown once, when
  made; the file holds no secret.

The running server reads ``admin-keys.json`` again whenever the file changes (a ``stat`` per request; the write is
a rename, so any change is a new inode), so ``korpu ss api-key revoke`` takes effect at the next request without a
restart.  A file that cannot be parsed refuses *every* key, including ``init``: without it the server cannot know
which keys were revoked (fail closed).

Checks raise and never return ``False``: :class:`~bridge.errors.MissingApiKey`,
:class:`~bridge.errors.InvalidApiKey`, :class:`~bridge.errors.InsufficientRole`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.errors import (
    ConfigError,
    InsufficientRole,
    InvalidApiKey,
    InvalidRequest,
    InvalidState,
    MissingApiKey,
    NotFound,
)
from bridge.fsutil import write_atomic
from security_server.config import CONFIG_NAME

__all__ = [
    "ADMIN_KEYS",
    "API_KEY_HEADER",
    "KEYS_FILE",
    "LEGACY_KEY_FILE",
    "LEGACY_KEY_ID",
    "AdminKey",
    "AdminKeys",
    "AdminRole",
    "extract_secret",
    "hash_secret",
    "register_api_key_commands",
    "require",
]

API_KEY_HEADER = "X-API-Key"
KEYS_FILE = "admin-keys.json"
LEGACY_KEY_FILE = "admin-api-key.sha256"
#: The id under which the ``korpu ss init`` key (``admin-api-key.sha256``) appears.
LEGACY_KEY_ID = "init"
_FORMAT = "korpu-admin-keys/1"
# Secrets are "<key id>.<43 URL-safe characters>" (the init key is 43 characters); anything much longer is not a
# key and is not hashed.
_MAX_SECRET = 256
_MAX_LABEL = 255
_HEX64 = frozenset("0123456789abcdef")


class AdminRole(enum.StrEnum):
    """What an admin API key may do (an ``admin`` key may do everything)."""

    ADMIN = "admin"
    AUDITOR = "auditor"
    OBSERVER = "observer"


@dataclass(frozen=True)
class AdminKey:
    """An admin API key as stored: never its secret."""

    key_id: str
    roles: frozenset[AdminRole]
    label: str
    created: str | None  # ISO 8601 UTC; for the init key, when its file was last written
    revoked: str | None = None

    def allows(self, role: AdminRole) -> bool:
        """Whether this key may act in ``role`` (``admin`` may act in every role)."""
        return role in self.roles or AdminRole.ADMIN in self.roles

    def to_json(self) -> dict[str, Any]:
        """JSON form for listings (no hash, no secret)."""
        return {
            "id": self.key_id,
            "roles": sorted(self.roles),
            "label": self.label,
            "created": self.created,
            "revoked": self.revoked,
        }


def hash_secret(secret: str) -> str:
    """The hex SHA-256 under which a key is stored (the secret itself never is)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def extract_secret(headers: Mapping[str, str]) -> str:
    """The key from ``X-API-Key`` or ``Authorization: Bearer``; :class:`MissingApiKey` / :class:`InvalidApiKey`."""
    # The same rules as catalog.auth.extract_secret, which is generic: one shared copy in bridge would serve both.
    secret = headers.get(API_KEY_HEADER, "").strip()
    if not secret:
        scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            secret = value.strip()
    if not secret:
        raise MissingApiKey(f"this endpoint needs an admin API key in the {API_KEY_HEADER} header")
    # Keys are printable ASCII.  aiohttp hands non-UTF-8 header bytes over as lone surrogates, which no key holds.
    if len(secret) > _MAX_SECRET or not secret.isascii() or not secret.isprintable():
        raise InvalidApiKey("the API key is not valid for this security server")
    return secret


@dataclass(frozen=True)
class _Stored:
    key: AdminKey
    sha256: str


@dataclass(frozen=True)
class _KeyFile:
    keys: tuple[_Stored, ...] = ()
    legacy_revoked: str | None = None


class AdminKeys:
    """The admin API keys of one security server state directory.

    ``legacy_hash`` is the ``init`` key's hash as the runtime read it at start; without it (the CLI) it is read
    from ``admin-api-key.sha256`` if that exists.
    """

    def __init__(self, state_dir: Path, *, legacy_hash: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / KEYS_FILE
        legacy_file = self.state_dir / LEGACY_KEY_FILE
        self._legacy_created: str | None = None
        if legacy_hash is None:
            with contextlib.suppress(FileNotFoundError):
                legacy_hash = legacy_file.read_text(encoding="utf-8").strip()
        with contextlib.suppress(OSError):
            self._legacy_created = _iso(dt.datetime.fromtimestamp(legacy_file.stat().st_mtime, dt.UTC))
        if legacy_hash is not None and (len(legacy_hash) != 64 or not set(legacy_hash) <= _HEX64):
            raise ConfigError(f"{LEGACY_KEY_FILE}: not a hex SHA-256 digest")
        self._legacy_hash = legacy_hash
        self._cache: tuple[tuple[int, int, int] | None, _KeyFile] | None = None

    # Reading -------------------------------------------------------------------------------------------------

    def list_keys(self) -> list[AdminKey]:
        """Every key (the ``init`` key first, if there is one), active and revoked."""
        return [entry.key for entry in self._entries()]

    def authenticate(self, secret: str) -> AdminKey:
        """The active key whose secret this is; :class:`InvalidApiKey` otherwise."""
        if len(secret) > _MAX_SECRET or not secret.isascii() or not secret.isprintable():
            raise InvalidApiKey("the API key is not valid for this security server")
        digest = hash_secret(secret)
        matched: _Stored | None = None
        # Compare against every key, without stopping at a match, so the time taken says nothing about which
        # keys exist or where in the file a key is.
        for entry in self._entries():
            if hmac.compare_digest(digest, entry.sha256):
                matched = entry
        if matched is None or matched.key.revoked is not None:
            raise InvalidApiKey("the API key is not valid for this security server")
        return matched.key

    def _entries(self) -> list[_Stored]:
        content = self._read()
        entries = []
        if self._legacy_hash is not None:
            legacy = AdminKey(
                LEGACY_KEY_ID,
                frozenset({AdminRole.ADMIN}),
                "created by korpu ss init",
                self._legacy_created,
                content.legacy_revoked,
            )
            entries.append(_Stored(legacy, self._legacy_hash))
        entries.extend(content.keys)
        return entries

    def _read(self) -> _KeyFile:
        """The key file's content, parsed again only when the file changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            signature = None
        else:
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1]
        content = _KeyFile() if signature is None else _parse(self.path.read_bytes())
        self._cache = (signature, content)
        return content

    # Changing (the CLI) --------------------------------------------------------------------------------------

    def create(self, roles: Iterable[AdminRole | str], label: str = "") -> tuple[str, str]:
        """Make a key with ``roles``; return ``(key_id, secret)``.  The secret is shown once and never stored."""
        try:
            role_set = frozenset(AdminRole(r) for r in roles)
        except ValueError:
            raise InvalidRequest(f"roles must be among {', '.join(r.value for r in AdminRole)}") from None
        if not role_set:
            raise InvalidRequest("an admin API key needs at least one role")
        if len(label) > _MAX_LABEL or not label.isprintable():
            raise InvalidRequest(f"the label must be at most {_MAX_LABEL} printable characters")
        key_id = f"k{secrets.token_hex(8)}"
        secret = f"{key_id}.{secrets.token_urlsafe(32)}"
        with self._locked():
            content = self._read()
            stored = _Stored(AdminKey(key_id, role_set, label, _iso(_now())), hash_secret(secret))
            self._write(replace(content, keys=(*content.keys, stored)))
        return key_id, secret

    def revoke(self, key_id: str) -> AdminKey:
        """Revoke key ``key_id`` (``init`` for the ``korpu ss init`` key); it stops working at the next request."""
        with self._locked():
            content = self._read()
            now = _iso(_now())
            if key_id == LEGACY_KEY_ID and self._legacy_hash is not None:
                if content.legacy_revoked is not None:
                    raise InvalidState(f"API key {key_id} is already revoked")
                self._write(replace(content, legacy_revoked=now))
            else:
                index = next((i for i, e in enumerate(content.keys) if e.key.key_id == key_id), None)
                if index is None:
                    raise NotFound(f"API key {key_id} does not exist")
                entry = content.keys[index]
                if entry.key.revoked is not None:
                    raise InvalidState(f"API key {key_id} is already revoked")
                keys = list(content.keys)
                keys[index] = _Stored(replace(entry.key, revoked=now), entry.sha256)
                self._write(replace(content, keys=tuple(keys)))
        return next(k for k in self.list_keys() if k.key_id == key_id)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `korpu ss api-key` commands at once must not lose each other's change (read-modify-write), so
        # changes hold an exclusive lock on a side file; readers need none because the file is replaced atomically.
        fd = os.open(self.state_dir / f".{KEYS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cache = None  # another process may have changed the file since it was last read
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, content: _KeyFile) -> None:
        document = {
            "format": _FORMAT,
            "legacy_revoked": content.legacy_revoked,
            "keys": [{**entry.key.to_json(), "sha256": entry.sha256} for entry in content.keys],
        }
        write_atomic(self.path, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode(), mode=0o600)
        self._cache = None


def _parse(data: bytes) -> _KeyFile:
    """Parse ``admin-keys.json`` strictly; any defect is a :class:`ConfigError` (and so refuses every key)."""

    def bad(what: str) -> ConfigError:
        # Names the file, never its directory: this message can reach an unauthenticated caller as a 500.
        return ConfigError(f"{KEYS_FILE}: {what}")

    try:
        document = json.loads(data)
    except ValueError:
        raise bad("not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise bad(f"format must be {_FORMAT}")
    legacy_revoked = document.get("legacy_revoked")
    if legacy_revoked is not None and not isinstance(legacy_revoked, str):
        raise bad("legacy_revoked must be a time or null")
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise bad("keys must be a list")
    keys: list[_Stored] = []
    seen: set[str] = set()
    for item in raw_keys:
        try:
            key_id, label, created, revoked, digest = (
                item["id"],
                item["label"],
                item["created"],
                item["revoked"],
                item["sha256"],
            )
            roles = frozenset(AdminRole(r) for r in item["roles"])
        except (KeyError, TypeError, ValueError):
            raise bad(
                "a key entry lacks id, label, roles, created, revoked or sha256, or names an unknown role"
            ) from None
        texts_ok = all(isinstance(v, str) for v in (key_id, label, created, digest))
        if not texts_ok or not (revoked is None or isinstance(revoked, str)):
            raise bad("a key entry has a field of the wrong type")
        if len(digest) != 64 or not set(digest) <= _HEX64 or not roles:
            raise bad(f"key {key_id}: sha256 must be a hex digest and roles must not be empty")
        if key_id in seen or key_id == LEGACY_KEY_ID:
            raise bad(f"key id {key_id} appears twice")
        seen.add(key_id)
        keys.append(_Stored(AdminKey(key_id, roles, label, created, revoked), digest))
    return _KeyFile(tuple(keys), legacy_revoked)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


# aiohttp -------------------------------------------------------------------------------------------------------

#: Where the admin application keeps its :class:`AdminKeys`.
ADMIN_KEYS: web.AppKey[AdminKeys] = web.AppKey("admin_keys", AdminKeys)


def require(request: web.Request, role: AdminRole) -> AdminKey:
    """The request's key, if it may act in ``role``; raises MissingApiKey, InvalidApiKey or InsufficientRole.

    Runs on the event loop on purpose: it costs a ``stat`` of the key file (and a small read after a change),
    less than handing it to a worker thread would.
    """
    secret = extract_secret(request.headers)
    key = request.config_dict[ADMIN_KEYS].authenticate(secret)
    if not key.allows(role):
        raise InsufficientRole(f"this endpoint needs an admin API key with role {role} (or admin)")
    return key


# korpu ss api-key ----------------------------------------------------------------------------------------------


def register_api_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``api-key add|list|revoke`` to the ``korpu ss`` subcommands ``sub``."""
    group = sub.add_parser("api-key", help="admin API keys with roles: add, list, revoke")
    actions = group.add_subparsers(dest="api_key_command", required=True, metavar="ACTION")
    roles = [r.value for r in AdminRole]

    add = actions.add_parser("add", help="make a key (the secret is shown once)")
    add.add_argument("--dir", type=Path, required=True, help="security server state directory")
    add.add_argument("--role", action="append", required=True, choices=roles, help="role of the key (repeatable)")
    add.add_argument("--label", default="", help="who or what the key is for")
    add.add_argument("--key-file", type=Path, help="write the secret to this file (mode 0600) instead of stdout")
    add.set_defaults(handler=_cmd_add)

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--dir", type=Path, required=True, help="security server state directory")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_cmd_list)

    revoke = actions.add_parser("revoke", help="revoke a key; the running server refuses it at the next request")
    revoke.add_argument("--dir", type=Path, required=True, help="security server state directory")
    revoke.add_argument("key_id", help=f"key id from `api-key list` ({LEGACY_KEY_ID}: the key made by ss init)")
    revoke.set_defaults(handler=_cmd_revoke)


def _open(state_dir: Path) -> AdminKeys:
    if not (state_dir / CONFIG_NAME).is_file():
        raise ConfigError(f"{state_dir}: not a security server state directory (no {CONFIG_NAME})")
    return AdminKeys(state_dir)


def _cmd_add(args: argparse.Namespace) -> int:
    keys = _open(args.dir)
    key_id, secret = keys.create(args.role, args.label)
    print(f"admin API key {key_id} created with roles {', '.join(sorted(set(args.role)))}")
    path: Path | None = args.key_file
    if path is not None:
        try:
            write_atomic(path, secret.encode(), mode=0o600)
        except OSError as exc:
            print(f"could not write the key to {path} ({exc.strerror}); here it is instead:")
        else:
            print(f"key written to {path}")
            return 0
    print(f"key (shown once, keep it safe): {secret}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    keys = _open(args.dir).list_keys()
    if args.json:
        print(json.dumps([k.to_json() for k in keys], indent=2, ensure_ascii=False))
        return 0
    print(f"{'ID':<18} {'ROLES':<24} {'CREATED':<21} {'REVOKED':<21} LABEL")
    for key in keys:
        roles = ",".join(sorted(key.roles))
        print(f"{key.key_id:<18} {roles:<24} {key.created or '-':<21} {key.revoked or '-':<21} {key.label}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    key = _open(args.dir).revoke(args.key_id)
    print(f"admin API key {key.key_id} revoked at {key.revoked}")
    return 0
