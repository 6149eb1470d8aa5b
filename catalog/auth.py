"""Management API authentication and role checks.

A caller presents its API key secret in ``X-API-Key`` (or as ``Authorization: Bearer <secret>``).  The store
resolves it to an :class:`~catalog.store.ApiKey`; the route then demands one of a set of roles.  The role sets
follow X-Road's central server: registration officers manage members, subsystems, registrations and the catalog;
security officers manage certificates and revocation; system administrators may do everything; observers read.

Both checks raise and never return ``False`` (fail closed): :class:`~bridge.errors.MissingApiKey`,
:class:`~bridge.errors.InvalidApiKey`, :class:`~bridge.errors.InsufficientRole`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bridge.errors import InsufficientRole, InvalidApiKey, MissingApiKey
from catalog.store import ApiKey, CatalogStore, Role

__all__ = [
    "ADMIN",
    "ANY_ROLE",
    "API_KEY_HEADER",
    "REGISTRATION",
    "SECURITY",
    "authenticate",
    "extract_secret",
    "require_role",
]

API_KEY_HEADER = "X-API-Key"

#: Every role, for read-only endpoints.
ANY_ROLE: frozenset[Role] = frozenset(Role)
#: Members, subsystems, registration decisions, groups, services and access rights.
REGISTRATION: frozenset[Role] = frozenset({Role.REGISTRATION_OFFICER, Role.SYSTEM_ADMINISTRATOR})
#: Certificates and revocation.
SECURITY: frozenset[Role] = frozenset({Role.SECURITY_OFFICER, Role.SYSTEM_ADMINISTRATOR})
#: API keys and parameters.
ADMIN: frozenset[Role] = frozenset({Role.SYSTEM_ADMINISTRATOR})

# Secrets are "<key id>.<43 url-safe characters>"; anything much longer is not a key and is not hashed.
_MAX_SECRET = 256


def extract_secret(headers: Mapping[str, str]) -> str:
    """The API key secret from ``X-API-Key`` or ``Authorization: Bearer``.

    :class:`MissingApiKey` if neither is given, :class:`InvalidApiKey` if the value cannot be a key.
    """
    secret = headers.get(API_KEY_HEADER, "").strip()
    if not secret:
        scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            secret = value.strip()
    if not secret:
        raise MissingApiKey(f"this endpoint needs an API key in the {API_KEY_HEADER} header")
    # Keys are printable ASCII.  aiohttp hands non-UTF-8 header bytes over as lone surrogates, which no key
    # contains and which cannot even be encoded for hashing: refuse them as the invalid key they are.
    if not secret.isascii() or not secret.isprintable():
        raise InvalidApiKey("the API key is not valid")
    return secret[: _MAX_SECRET + 1]


def require_role(key: ApiKey, allowed: frozenset[Role]) -> None:
    """Raise :class:`InsufficientRole` unless ``key`` holds one of ``allowed``."""
    if not key.roles & allowed:
        needed = ", ".join(sorted(allowed))
        raise InsufficientRole(f"this operation needs one of the roles: {needed}")


async def authenticate(store: CatalogStore, headers: Mapping[str, str], allowed: frozenset[Role]) -> ApiKey:
    """Resolve the request's API key (in a worker thread: the store blocks) and check its roles."""
    secret = extract_secret(headers)
    key = await asyncio.to_thread(store.authenticate, secret)
    require_role(key, allowed)
    return key
