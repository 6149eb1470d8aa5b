"""Access decisions: whether a client may call a service, with a given method and path.

:func:`decide` is pure and fast: it reads a :class:`~bridge.globalconf.GlobalConf` and a
:class:`~policies.local.LocalPolicy`, never does I/O, and explains every outcome in a :class:`Decision` that the
message log records.  The order of evaluation (documented in ``docs/policies.md`` and pinned by the tests):

1. a REST path that is not normalised is denied outright (fail closed, no rule is consulted);
2. the provider's local **denies**, in order: the first that matches denies, whatever grants the request;
3. central **access rights** from global configuration, in document order: the first that matches allows;
4. the provider's local **grants**, in order: the first that matches allows;
5. nothing matched: denied by default.

Rights are indexed once per configuration object (and per local policy object) by service and subject, so a
decision looks at only the handful of rules that could possibly apply, however many rights the federation has.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from bridge.errors import AccessDenied, ConfigError
from bridge.globalconf import GlobalConf
from bridge.identifiers import ClientId, GlobalGroupId, LocalGroupId, ServiceId, SubsystemId
from policies.local import LocalDeny, LocalGrant, LocalPolicy, Subject
from policies.paths import PathPattern, compile_pattern, path_problem

__all__ = ["Decision", "RightsIndex", "allowed_services", "decide", "rights_index"]

#: Rule ids of the two guards (not configured rules, but the message log should say what decided).
GUARD_PATH = "guard:path-not-normalised"
GUARD_ERROR = "guard:evaluation-error"

# A service "code key": the provider and service code, without version.  A plain tuple, because building a
# ServiceId per message would re-validate every code.
_ServiceKey = tuple[SubsystemId, str]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an access check and why.

    ``rule`` identifies what decided (``central:GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/getPerson GET
    /persons/*``, ``local:grant#3``, ``local:deny#2``, ``guard:path-not-normalised``) and is ``None`` when the
    request was denied by default.  ``reason`` is a sentence for auditors; it names identifiers and rules, so it
    belongs in the message log, not in the fault returned to the caller (see :meth:`require`).
    """

    allowed: bool
    reason: str
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decision as plain data for the message log."""
        return {"allowed": self.allowed, "reason": self.reason, "rule": self.rule}

    def require(self, service: ServiceId, *, origin: str = "Server.ServerProxy") -> None:
        """Return if allowed, else raise :class:`~bridge.errors.AccessDenied` (``Server.ServerProxy.AccessDenied``).

        The fault's message is X-Road's terse ``Request is not allowed: SERVICE:…``; the detailed reason stays in
        the message log, because it reveals the provider's policy and other clients' group memberships.
        """
        if not self.allowed:
            raise AccessDenied(f"Request is not allowed: {service.encoded()}", origin=origin)


@dataclass(frozen=True, slots=True, eq=False)
class _Rule:
    """One grant or deny, compiled: ready to be tested against a request."""

    order: int
    subject: Subject
    service: ServiceId
    method: str | None
    pattern: PathPattern | None
    rule_id: str
    description: str
    note: str | None = None

    def covers_version(self, version: str | None) -> bool:
        # A right without version covers every version of the service code; one with a version only that one.
        wanted = self.service.service_version
        return wanted is None or wanted == version

    def narrows(self) -> bool:
        return self.method is not None or self.pattern is not None

    def covers_request(self, method: str | None, path: str | None) -> bool:
        # A rule narrowed by method or path applies only to requests that carry a method/path that fits it; a
        # SOAP request (no method, no path) is therefore covered only by unnarrowed rules.
        if self.method is not None and self.method != method:
            return False
        if self.pattern is not None:
            return path is not None and self.pattern.matches(path)
        return True


def _describe(subject: Subject, service: ServiceId, method: str | None, path: str | None) -> str:
    text = f"{subject.encoded()} -> {service.encoded()}"
    if method is not None or path is not None:
        text += f" {method or 'ANY'} {path or '/**'}"
    return text


@dataclass(frozen=True, slots=True, eq=False)
class RightsIndex:
    """Rules grouped for fast lookup; built by :func:`rights_index` once per configuration object.

    ``grants`` and ``denies`` map ``(provider, service code)`` and a subject to the rules naming them, in
    evaluation order.  ``groups_of`` maps a client to the groups (global or local) that list it.  ``invalid``
    holds central rights that can never match (a malformed path pattern, say) with the reason, for diagnostics.
    """

    grants: dict[_ServiceKey, dict[Subject, tuple[_Rule, ...]]]
    denies: dict[_ServiceKey, tuple[_Rule, ...]]
    groups_of: dict[ClientId, tuple[GlobalGroupId | LocalGroupId, ...]]
    by_provider: dict[SubsystemId, tuple[_Rule, ...]]
    invalid: tuple[tuple[int, str], ...] = ()


def _group_rules(rules: Iterable[_Rule]) -> dict[_ServiceKey, dict[Subject, tuple[_Rule, ...]]]:
    grouped: dict[_ServiceKey, dict[Subject, list[_Rule]]] = {}
    for rule in rules:
        key = (rule.service.provider, rule.service.service_code)
        grouped.setdefault(key, {}).setdefault(rule.subject, []).append(rule)
    return {key: {s: tuple(rs) for s, rs in by_subject.items()} for key, by_subject in grouped.items()}


def _by_provider(rules: Iterable[_Rule]) -> dict[SubsystemId, tuple[_Rule, ...]]:
    grouped: dict[SubsystemId, list[_Rule]] = {}
    for rule in rules:
        grouped.setdefault(rule.service.provider, []).append(rule)
    return {k: tuple(v) for k, v in grouped.items()}


def _build_central(conf: GlobalConf) -> RightsIndex:
    rules: list[_Rule] = []
    invalid: list[tuple[int, str]] = []
    for n, right in enumerate(conf.access_rights, start=1):
        try:
            method = right.method.upper() if right.method is not None else None
            pattern = compile_pattern(right.path) if right.path is not None else None
        except (ConfigError, AttributeError) as exc:
            # A right the engine cannot read grants nothing (fail closed); keep it for diagnostics.
            invalid.append((n, str(exc)))
            continue
        description = _describe(right.subject, right.service, method, pattern.text if pattern else None)
        rules.append(_Rule(n, right.subject, right.service, method, pattern, f"central:{description}", description))
    groups_of: dict[ClientId, list[GlobalGroupId | LocalGroupId]] = {}
    for group in conf.groups:
        for member in group.members:
            groups_of.setdefault(member, []).append(group.id)
    return RightsIndex(
        grants=_group_rules(rules),
        denies={},
        groups_of={k: tuple(v) for k, v in groups_of.items()},
        by_provider=_by_provider(rules),
        invalid=tuple(invalid),
    )


def _compile_local(kind: Literal["grant", "deny"], n: int, rule: LocalGrant | LocalDeny) -> _Rule:
    pattern = compile_pattern(rule.path) if rule.path is not None else None
    description = _describe(rule.subject, rule.service, rule.method, pattern.text if pattern else None)
    return _Rule(n, rule.subject, rule.service, rule.method, pattern, f"local:{kind}#{n}", description, rule.note)


def _build_local(local: LocalPolicy) -> RightsIndex:
    grants = [_compile_local("grant", n, g) for n, g in enumerate(local.grants, start=1)]
    denies: dict[_ServiceKey, list[_Rule]] = {}
    for n, d in enumerate(local.denies, start=1):
        rule = _compile_local("deny", n, d)
        denies.setdefault((rule.service.provider, rule.service.service_code), []).append(rule)
    groups_of: dict[ClientId, list[GlobalGroupId | LocalGroupId]] = {}
    for code in sorted(local.groups):
        for member in local.groups[code]:
            groups_of.setdefault(member, []).append(LocalGroupId(code))
    return RightsIndex(
        grants=_group_rules(grants),
        denies={k: tuple(v) for k, v in denies.items()},
        groups_of={k: tuple(v) for k, v in groups_of.items()},
        by_provider=_by_provider(grants),
    )


# Index caches keyed by object identity.  GlobalConf and LocalPolicy are frozen dataclasses whose generated
# __hash__ would hash every field on each lookup (and LocalPolicy holds a mapping, so it cannot be hashed), which
# rules out a WeakKeyDictionary.  A weak reference stored with the entry proves the id still names the same object;
# its callback drops the entry when the object dies, so the cache never outlives the configurations it serves.
_O = TypeVar("_O", GlobalConf, LocalPolicy)
_CacheEntry = tuple["weakref.ref[Any]", RightsIndex]
_central_cache: dict[int, _CacheEntry] = {}
_local_cache: dict[int, _CacheEntry] = {}
_cache_lock = threading.Lock()


def _cached(cache: dict[int, _CacheEntry], obj: _O, build: Callable[[_O], RightsIndex]) -> RightsIndex:
    key = id(obj)
    entry = cache.get(key)
    if entry is not None and entry[0]() is obj:
        return entry[1]
    index = build(obj)

    def _drop(ref: weakref.ref[Any]) -> None:
        # Another object may have reused the id since; only remove the entry this reference created.
        with _cache_lock:
            current = cache.get(key)
            if current is not None and current[0] is ref:
                del cache[key]

    with _cache_lock:
        cache[key] = (weakref.ref(obj, _drop), index)
    return index


def rights_index(conf: GlobalConf) -> RightsIndex:
    """The compiled index of ``conf``'s access rights (built on first use, then reused for that object)."""
    return _cached(_central_cache, conf, _build_central)


def _local_index(local: LocalPolicy) -> RightsIndex:
    return _cached(_local_cache, local, _build_local)


def _first(
    index: RightsIndex,
    key: _ServiceKey,
    subjects: tuple[Subject, ...],
    version: str | None,
    method: str | None,
    path: str | None,
) -> _Rule | None:
    by_subject = index.grants.get(key)
    if not by_subject:
        return None
    best: _Rule | None = None
    for subject in subjects:
        # Each subject's rules are in evaluation order: stop at its first fitting rule, or as soon as its rules
        # come later than the best candidate found for another subject.
        for rule in by_subject.get(subject, ()):
            if best is not None and rule.order >= best.order:
                break
            if rule.covers_version(version) and rule.covers_request(method, path):
                best = rule
                break
    return best


def _subjects(client: ClientId, central: RightsIndex, local: RightsIndex) -> tuple[Subject, ...]:
    # A member grant covers only the member itself: a subsystem's subjects never include its member (X-Road).
    return (client, *central.groups_of.get(client, ()), *local.groups_of.get(client, ()))


def _allow_reason(rule: _Rule, client: ClientId, service: ServiceId, where: str) -> str:
    subject = rule.subject
    if isinstance(subject, GlobalGroupId):
        how = f"global group {subject.path()}, which {client.encoded()} belongs to"
    elif isinstance(subject, LocalGroupId):
        how = f"local group {subject.group_code}, which {client.encoded()} belongs to"
    else:
        how = f"a right granted to {client.encoded()} itself"
    text = f"allowed by {how} ({where}: {rule.description})"
    if rule.note:
        text += f"; note: {rule.note}"
    return text


def decide(
    conf: GlobalConf,
    local: LocalPolicy,
    client: ClientId,
    service: ServiceId,
    *,
    method: str | None = None,
    path: str | None = None,
) -> Decision:
    """Decide whether ``client`` may call ``service``; deny by default, and always say why.

    ``method`` and ``path`` are given for REST requests (``path`` as the REST parser normalised it, without the
    query string); SOAP requests pass neither.  The order of evaluation is in the module docstring.  An unexpected
    error while evaluating denies (fail closed) instead of propagating.
    """
    try:
        return _decide(conf, local, client, service, method, path)
    except Exception as exc:  # fail closed: a bug or a corrupt rule must never turn into an allow
        return Decision(False, f"policy evaluation failed ({type(exc).__name__}); denied (fail closed)", GUARD_ERROR)


def _decide(
    conf: GlobalConf, local: LocalPolicy, client: ClientId, service: ServiceId, method: str | None, path: str | None
) -> Decision:
    # (1) Refuse paths an upstream might resolve differently from the matcher, before any rule sees them.
    if path is not None:
        problem = path_problem(path)
        if problem is not None:
            return Decision(False, f"path not normalised: {problem}; denied without matching rules", GUARD_PATH)
    if method is not None:
        method = method.upper()

    central = rights_index(conf)
    local_index = _local_index(local)
    subjects = _subjects(client, central, local_index)
    key = (service.provider, service.service_code)
    version = service.service_version

    # (2) Local denies narrow everything else, so they are checked first and the first match wins.
    subject_set = set(subjects)
    for deny in local_index.denies.get(key, ()):
        if deny.subject in subject_set and deny.covers_version(version) and deny.covers_request(method, path):
            detail = deny.note or deny.description
            return Decision(False, f"denied by local rule #{deny.order}: {detail}", deny.rule_id)

    # (3) Central access rights, then (4) local grants; within each, the earliest matching rule is reported.
    for index, where in ((central, "central access right"), (local_index, "local grant")):
        rule = _first(index, key, subjects, version, method, path)
        if rule is not None:
            return Decision(True, _allow_reason(rule, client, service, where), rule.rule_id)

    # (5) Deny by default.
    target = service.encoded()
    if method is not None or path is not None:
        target += f" ({method or 'ANY'} {path or '/'})"
    return Decision(False, f"no access right grants {client.encoded()} access to {target}; denied by default", None)


def allowed_services(conf: GlobalConf, local: LocalPolicy, client: ClientId, provider: SubsystemId) -> list[ServiceId]:
    """The services of ``provider`` that ``client`` may call (the ``allowedMethods`` metaservice), sorted.

    A service is listed if some central or local grant for it names the client (directly or through a group) and
    no local deny without method and path removes it for the client.  REST grants narrowed by method or path
    count: the client may call *some* of the service's endpoints.  Catalog entries (``conf.services``) are listed
    with their versions; a granted service with no catalog entry is listed as the grant names it.
    """
    central = rights_index(conf)
    local_index = _local_index(local)
    subjects = set(_subjects(client, central, local_index))

    granted = [
        rule
        for index in (central, local_index)
        for rule in index.by_provider.get(provider, ())
        if rule.subject in subjects
    ]
    if not granted:
        return []
    catalog = [info.id for info in conf.services if info.id.provider == provider]
    candidates = set(catalog)
    for rule in granted:
        # A grant for a service the catalog does not list (or not in that version) still names a callable service.
        if not any(
            sid.service_code == rule.service.service_code and rule.covers_version(sid.service_version)
            for sid in catalog
        ):
            candidates.add(rule.service)

    result: list[ServiceId] = []
    for sid in candidates:
        key = (sid.provider, sid.service_code)
        version = sid.service_version
        if not any(r.service.service_code == sid.service_code and r.covers_version(version) for r in granted):
            continue
        blocked = any(
            r.subject in subjects and not r.narrows() and r.covers_version(version)
            for r in local_index.denies.get(key, ())
        )
        if not blocked:
            result.append(sid)
    return sorted(result, key=lambda s: (s.service_code, s.service_version or ""))
