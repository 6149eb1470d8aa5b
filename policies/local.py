"""The provider's own access policy: local groups, extra grants and narrowing denies.

A provider's security server may add to what global configuration allows (X-Road's "service clients" access
rights configured on the security server) and may narrow it: a :class:`LocalDeny` that matches a request wins over
every grant, central or local.  See ``docs/policies.md`` for the order of evaluation.

:meth:`LocalPolicy.from_mapping` reads the YAML-shaped form::

    groups:
      tax-officers: [SUBSYSTEM:AZ/GOV/1400057421/tax, MEMBER:AZ/COM/77001]
    grants:
      - subject: LOCALGROUP:tax-officers
        service: SERVICE:AZ/GOV/1400057421/population/getPerson
        method: GET
        path: /persons/*
    denies:
      - subject: GLOBALGROUP:AZ/banks
        service: SERVICE:AZ/GOV/1400057421/population/getPerson
        path: /persons/*/photo
        note: banks never receive photos

Identifiers use the encoded form (``TYPE:path``).  Every problem raises :class:`~bridge.errors.ConfigError`
whose message names the entry (``denies[0].subject``), so an operator can find it in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bridge.errors import ConfigError, InvalidIdentifier
from bridge.identifiers import (
    ClientId,
    GlobalGroupId,
    LocalGroupId,
    MemberId,
    ServiceId,
    SubsystemId,
    XRoadId,
    check_code,
    parse_encoded,
)
from policies.paths import compile_pattern

__all__ = ["LocalDeny", "LocalGrant", "LocalPolicy", "Subject", "normalise_method"]

#: Who a rule may name: a client (member or subsystem), a global group, or a local group.
Subject = MemberId | SubsystemId | GlobalGroupId | LocalGroupId

# RFC 9110 "token": the characters an HTTP method name may contain.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RULE_KEYS = frozenset({"subject", "service", "method", "path", "note"})
_TOP_KEYS = frozenset({"groups", "grants", "denies"})


def normalise_method(method: str | None, where: str) -> str | None:
    """Upper-case an HTTP method name (``None`` stays ``None``: any method), or raise :class:`ConfigError`."""
    if method is None:
        return None
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise ConfigError(f"{where}: {method!r} is not an HTTP method name")
    return method.upper()


@dataclass(frozen=True, slots=True)
class LocalGrant:
    """An additional access right defined on the provider's security server.

    ``method`` (``None``: any) and ``path`` (a pattern, see :mod:`policies.paths`; ``None``: any) narrow it for
    REST services.  ``note`` is free text shown in decision reasons.
    """

    subject: Subject
    service: ServiceId
    method: str | None = None
    path: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", normalise_method(self.method, "method"))


@dataclass(frozen=True, slots=True)
class LocalDeny:
    """A local narrowing rule: a request it matches is denied, whatever grants it.

    Same shape as :class:`LocalGrant`; a deny without ``method`` and ``path`` covers the whole service (for REST
    and SOAP requests alike), one with either covers only REST requests that match them.
    """

    subject: Subject
    service: ServiceId
    method: str | None = None
    path: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", normalise_method(self.method, "method"))


@dataclass(frozen=True)
class LocalPolicy:
    """The provider's local policy; immutable, validated when built.

    ``groups`` maps local group codes to their members; rules may name only groups defined here.
    Rules are numbered from 1 in tuple order (``local:grant#1``, ``local:deny#1``) in decision explanations.
    """

    groups: Mapping[str, frozenset[ClientId]] = field(default_factory=dict)
    grants: tuple[LocalGrant, ...] = ()
    denies: tuple[LocalDeny, ...] = ()

    def __post_init__(self) -> None:
        groups: dict[str, frozenset[ClientId]] = {}
        for code, members in self.groups.items():
            where = f"local policy groups[{code!r}]"
            try:
                check_code(code, "groupCode")
            except InvalidIdentifier as exc:
                raise ConfigError(f"{where}: {exc.message}") from exc
            for member in members:
                if not isinstance(member, MemberId | SubsystemId):
                    raise ConfigError(f"{where}: {member!r} is not a member or subsystem identifier")
            groups[code] = frozenset(members)
        # A read-only copy: a caller mutating its dict afterwards must not change a policy already in use.
        object.__setattr__(self, "groups", MappingProxyType(groups))
        object.__setattr__(self, "grants", tuple(self.grants))
        object.__setattr__(self, "denies", tuple(self.denies))
        self._check_rules("grants", self.grants)
        self._check_rules("denies", self.denies)

    def _check_rules(self, kind: str, rules: Sequence[LocalGrant | LocalDeny]) -> None:
        for n, rule in enumerate(rules):
            where = f"local policy {kind}[{n}]"
            if not isinstance(rule.subject, MemberId | SubsystemId | GlobalGroupId | LocalGroupId):
                raise ConfigError(f"{where}.subject: {rule.subject!r} cannot be the subject of an access rule")
            if isinstance(rule.subject, LocalGroupId) and rule.subject.group_code not in self.groups:
                raise ConfigError(f"{where}.subject: local group {rule.subject.group_code!r} is not defined")
            if not isinstance(rule.service, ServiceId):
                raise ConfigError(f"{where}.service: {rule.service!r} is not a service identifier")
            if rule.path is not None:
                # Compiled (and cached) now so that a bad pattern fails at load time, not on the first message.
                try:
                    compile_pattern(rule.path)
                except ConfigError as exc:
                    raise ConfigError(f"{where}.path: {exc.message}") from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LocalPolicy:
        """Build a policy from its YAML-shaped form (see the module docstring); ``None`` is the empty policy."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("local policy must be a mapping with keys groups, grants, denies")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"local policy: unknown key(s) {', '.join(sorted(map(str, unknown)))}")

        raw_groups = data.get("groups") or {}
        if not isinstance(raw_groups, Mapping):
            raise ConfigError("local policy groups: must map group codes to lists of client identifiers")
        groups: dict[str, frozenset[ClientId]] = {}
        for code, members in raw_groups.items():
            where = f"local policy groups[{code!r}]"
            if not isinstance(members, Sequence) or isinstance(members, str):
                raise ConfigError(f"{where}: must be a list of client identifiers")
            clients: list[ClientId] = []
            for i, text in enumerate(members):
                ident = _parse(text, f"{where}[{i}]")
                if not isinstance(ident, MemberId | SubsystemId):
                    raise ConfigError(f"{where}[{i}]: {text!r} is not a MEMBER or SUBSYSTEM identifier")
                clients.append(ident)
            groups[str(code)] = frozenset(clients)

        grants = tuple(
            LocalGrant(**_rule_fields(entry, f"local policy grants[{n}]")) for n, entry in _items(data, "grants")
        )
        denies = tuple(
            LocalDeny(**_rule_fields(entry, f"local policy denies[{n}]")) for n, entry in _items(data, "denies")
        )
        return cls(groups=groups, grants=grants, denies=denies)


def _items(data: Mapping[str, Any], key: str) -> list[tuple[int, Any]]:
    entries = data.get(key) or []
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ConfigError(f"local policy {key}: must be a list of rules")
    return list(enumerate(entries))


def _rule_fields(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a mapping with subject, service and optional method, path, note")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    for key in ("subject", "service"):
        if key not in entry:
            raise ConfigError(f"{where}: {key} is required")
    subject = _parse(entry["subject"], f"{where}.subject")
    if not isinstance(subject, MemberId | SubsystemId | GlobalGroupId | LocalGroupId):
        raise ConfigError(
            f"{where}.subject: {entry['subject']!r} must be a MEMBER, SUBSYSTEM, GLOBALGROUP or LOCALGROUP identifier"
        )
    service = _parse(entry["service"], f"{where}.service")
    if not isinstance(service, ServiceId):
        raise ConfigError(f"{where}.service: {entry['service']!r} must be a SERVICE identifier")
    note = entry.get("note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{where}.note: must be a string")
    path = entry.get("path")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{where}.path: must be a string")
    return {
        "subject": subject,
        "service": service,
        "method": normalise_method(entry.get("method"), f"{where}.method"),
        "path": path,
        "note": note,
    }


def _parse(text: object, where: str) -> XRoadId:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: identifier must be a string in encoded form such as SUBSYSTEM:AZ/GOV/1/x")
    # Identifier errors are the caller's fault on the wire (Client.InvalidIdentifier) but a configuration fault
    # here; re-raise them as ConfigError naming the entry, keeping the original as the cause.
    try:
        return parse_encoded(text)
    except InvalidIdentifier as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc
