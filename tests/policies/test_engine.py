"""Access decisions (policies/engine.py) and local policy loading (policies/local.py)."""

from __future__ import annotations

import datetime as dt
import gc
import timeit
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import AccessDenied, ConfigError
from bridge.globalconf import AccessRight, GlobalConf, GlobalGroup, ServiceInfo
from bridge.identifiers import ClientId, GlobalGroupId, LocalGroupId, MemberId, ServiceId, SubsystemId
from policies import Decision, LocalDeny, LocalGrant, LocalPolicy, allowed_services, decide, rights_index
from policies.engine import _central_cache

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
GOV = SubsystemId("AZ", "GOV", "1", "population")
GET_PERSON = GOV.service("getPerson")
GET_PERSON_V1 = GOV.service("getPerson", "v1")
GET_PERSON_V2 = GOV.service("getPerson", "v2")
PERSONS_REST = GOV.service("persons")
LOANS = SubsystemId("AZ", "COM", "9", "loans")
BANK = LOANS.member
OTHER = SubsystemId("AZ", "COM", "10", "crm")
BANKS = GlobalGroupId("AZ", "banks")
NO_LOCAL = LocalPolicy()


def conf(
    *rights: AccessRight, groups: tuple[GlobalGroup, ...] = (), services: tuple[ServiceInfo, ...] = ()
) -> GlobalConf:
    return GlobalConf(
        instance="AZ",
        version=1,
        generated_at=NOW,
        expires_at=NOW + dt.timedelta(hours=1),
        central_server_url="https://cs.example",
        groups=groups,
        services=services,
        access_rights=rights,
    )


def test_deny_by_default_with_reason() -> None:
    """With no rights at all, a request is denied, the rule is None and the reason names client and service."""
    decision = decide(conf(), NO_LOCAL, LOANS, GET_PERSON_V1)
    assert decision == Decision(
        False,
        "no access right grants SUBSYSTEM:AZ/COM/9/loans access to SERVICE:AZ/GOV/1/population/getPerson/v1; "
        "denied by default",
        None,
    )


def test_grant_to_subsystem() -> None:
    """A right naming the subsystem allows it; rule and reason identify the central right."""
    decision = decide(conf(AccessRight(LOANS, GET_PERSON)), NO_LOCAL, LOANS, GET_PERSON)
    assert decision.allowed is True
    assert decision.rule == "central:SUBSYSTEM:AZ/COM/9/loans -> SERVICE:AZ/GOV/1/population/getPerson"
    assert decision.reason == (
        "allowed by a right granted to SUBSYSTEM:AZ/COM/9/loans itself (central access right: "
        "SUBSYSTEM:AZ/COM/9/loans -> SERVICE:AZ/GOV/1/population/getPerson)"
    )


def test_grant_to_subsystem_does_not_cover_siblings() -> None:
    """Another subsystem of another member gets nothing from a subsystem's right."""
    decision = decide(conf(AccessRight(LOANS, GET_PERSON)), NO_LOCAL, OTHER, GET_PERSON)
    assert (decision.allowed, decision.rule) == (False, None)


def test_member_grant_covers_member_only() -> None:
    """X-Road semantics: a right granted to a member covers the member itself, not its subsystems."""
    c = conf(AccessRight(BANK, GET_PERSON))
    assert decide(c, NO_LOCAL, BANK, GET_PERSON).allowed is True
    assert decide(c, NO_LOCAL, LOANS, GET_PERSON).allowed is False


def test_global_group_grant_with_subsystem_listed() -> None:
    """A global group listing a subsystem gives that subsystem the group's rights; the reason says so."""
    c = conf(
        AccessRight(BANKS, PERSONS_REST, method="GET", path="/persons/*"),
        groups=(GlobalGroup(BANKS, "banks", members=(LOANS,)),),
    )
    decision = decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="get", path="/persons/42")
    assert decision == Decision(
        True,
        "allowed by global group AZ/banks, which SUBSYSTEM:AZ/COM/9/loans belongs to (central access right: "
        "GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/persons GET /persons/*)",
        "central:GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/persons GET /persons/*",
    )


def test_global_group_grant_with_member_listed() -> None:
    """A global group listing a member covers that member, but (as with direct grants) not its subsystems."""
    c = conf(AccessRight(BANKS, GET_PERSON), groups=(GlobalGroup(BANKS, "banks", members=(BANK,)),))
    assert (
        decide(c, NO_LOCAL, BANK, GET_PERSON).rule
        == "central:GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/getPerson"
    )
    assert decide(c, NO_LOCAL, LOANS, GET_PERSON).allowed is False


def test_unknown_global_group_grants_nothing() -> None:
    """A right naming a group that global configuration does not define matches nobody."""
    c = conf(AccessRight(GlobalGroupId("AZ", "ghosts"), GET_PERSON))
    assert decide(c, NO_LOCAL, LOANS, GET_PERSON).allowed is False


def test_local_group_grant() -> None:
    """A local grant to a local group allows its members; rule is local:grant#N and the reason names the group."""
    local = LocalPolicy(
        groups={"lenders": frozenset({LOANS})},
        grants=(LocalGrant(LocalGroupId("lenders"), GET_PERSON, note="loan checks"),),
    )
    decision = decide(conf(), local, LOANS, GET_PERSON_V1)
    assert decision == Decision(
        True,
        "allowed by local group lenders, which SUBSYSTEM:AZ/COM/9/loans belongs to (local grant: "
        "LOCALGROUP:lenders -> SERVICE:AZ/GOV/1/population/getPerson); note: loan checks",
        "local:grant#1",
    )
    assert decide(conf(), local, OTHER, GET_PERSON_V1).allowed is False


def test_versionless_grant_covers_all_versions() -> None:
    """A right without version covers every version of the service code, and the version-less call."""
    c = conf(AccessRight(LOANS, GET_PERSON))
    assert [decide(c, NO_LOCAL, LOANS, s).allowed for s in (GET_PERSON, GET_PERSON_V1, GET_PERSON_V2)] == [True] * 3


def test_versioned_grant_covers_only_its_version() -> None:
    """A right with a version covers only that version (not others, not the version-less call)."""
    c = conf(AccessRight(LOANS, GET_PERSON_V1))
    assert [decide(c, NO_LOCAL, LOANS, s).allowed for s in (GET_PERSON, GET_PERSON_V1, GET_PERSON_V2)] == [
        False,
        True,
        False,
    ]


def test_provider_must_match_exactly() -> None:
    """The same service code at another provider is a different service."""
    elsewhere = SubsystemId("AZ", "GOV", "2", "population").service("getPerson")
    assert decide(conf(AccessRight(LOANS, GET_PERSON)), NO_LOCAL, LOANS, elsewhere).allowed is False


def test_rest_method_narrowing() -> None:
    """A method-narrowed right allows that method only (compared case-insensitively), and never a SOAP call."""
    c = conf(AccessRight(LOANS, PERSONS_REST, method="get"))
    results = {
        m: decide(c, NO_LOCAL, LOANS, PERSONS_REST, method=m, path="/persons").allowed for m in ("GET", "get", "POST")
    }
    assert results == {"GET": True, "get": True, "POST": False}
    assert decide(c, NO_LOCAL, LOANS, PERSONS_REST).allowed is False


def test_rest_path_narrowing() -> None:
    """A path-narrowed right applies its pattern: '/persons/*' is one segment below /persons."""
    c = conf(AccessRight(LOANS, PERSONS_REST, path="/persons/*"))
    results = {
        p: decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="GET", path=p).allowed
        for p in ("/persons/123", "/persons/123/docs", "/persons")
    }
    assert results == {"/persons/123": True, "/persons/123/docs": False, "/persons": False}
    assert decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="GET", path="/persons/1").rule == (
        "central:SUBSYSTEM:AZ/COM/9/loans -> SERVICE:AZ/GOV/1/population/persons ANY /persons/*"
    )


def test_unnarrowed_grant_covers_any_rest_request() -> None:
    """A right without method and path covers every method and path of the service."""
    c = conf(AccessRight(LOANS, PERSONS_REST))
    assert decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="DELETE", path="/anything/at/all").allowed is True


def test_local_deny_overrides_central_grant() -> None:
    """Precedence: a matching local deny wins over a central grant; the reason quotes the deny's note."""
    c = conf(AccessRight(BANKS, PERSONS_REST), groups=(GlobalGroup(BANKS, "banks", members=(LOANS,)),))
    local = LocalPolicy(
        denies=(
            LocalDeny(OTHER, PERSONS_REST),
            LocalDeny(BANKS, PERSONS_REST, path="/persons/*/photo", note="banks never receive photos"),
        )
    )
    denied = decide(c, local, LOANS, PERSONS_REST, method="GET", path="/persons/1/photo")
    assert denied == Decision(False, "denied by local rule #2: banks never receive photos", "local:deny#2")
    allowed = decide(c, local, LOANS, PERSONS_REST, method="GET", path="/persons/1")
    assert (allowed.allowed, allowed.rule) == (
        True,
        "central:GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/persons",
    )


def test_local_deny_overrides_local_grant_and_explains_itself_without_note() -> None:
    """A deny also beats a local grant; without a note the reason shows the rule itself."""
    local = LocalPolicy(grants=(LocalGrant(LOANS, GET_PERSON),), denies=(LocalDeny(LOANS, GET_PERSON_V2),))
    assert decide(conf(), local, LOANS, GET_PERSON_V1).allowed is True
    assert decide(conf(), local, LOANS, GET_PERSON_V2) == Decision(
        False,
        "denied by local rule #1: SUBSYSTEM:AZ/COM/9/loans -> SERVICE:AZ/GOV/1/population/getPerson/v2",
        "local:deny#1",
    )


def test_narrowed_deny_does_not_apply_to_soap() -> None:
    """A deny narrowed by method/path only matches REST requests that fit it; an unnarrowed deny matches SOAP."""
    c = conf(AccessRight(LOANS, GET_PERSON))
    narrowed = LocalPolicy(denies=(LocalDeny(LOANS, GET_PERSON, method="DELETE"),))
    whole = LocalPolicy(denies=(LocalDeny(LOANS, GET_PERSON),))
    assert (decide(c, narrowed, LOANS, GET_PERSON).allowed, decide(c, whole, LOANS, GET_PERSON).allowed) == (
        True,
        False,
    )


def test_central_grant_reported_before_local_grant() -> None:
    """Order: when central and local grants both match, the central right is the one reported."""
    local = LocalPolicy(grants=(LocalGrant(LOANS, GET_PERSON),))
    assert decide(conf(AccessRight(LOANS, GET_PERSON)), local, LOANS, GET_PERSON).rule == (
        "central:SUBSYSTEM:AZ/COM/9/loans -> SERVICE:AZ/GOV/1/population/getPerson"
    )


def test_earliest_matching_central_right_is_reported() -> None:
    """Among several matching central rights, the first in document order is reported, whatever its subject."""
    c = conf(
        AccessRight(BANKS, GET_PERSON),
        AccessRight(LOANS, GET_PERSON),
        groups=(GlobalGroup(BANKS, "banks", members=(LOANS,)),),
    )
    assert (
        decide(c, NO_LOCAL, LOANS, GET_PERSON).rule
        == "central:GLOBALGROUP:AZ/banks -> SERVICE:AZ/GOV/1/population/getPerson"
    )


@pytest.mark.parametrize("path", ["/persons/../admin", "/persons/%2e%2e/admin", "/a%2Fb", "/a%5cb", "/a\x00b"])
def test_unnormalised_paths_are_denied_even_with_a_grant_for_everything(path: str) -> None:
    """Fail closed: a path that is not normalised is denied before any rule is consulted."""
    c = conf(AccessRight(LOANS, PERSONS_REST))
    decision = decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="GET", path=path)
    assert (decision.allowed, decision.rule) == (False, "guard:path-not-normalised")
    assert decision.reason.startswith("path not normalised: ")


@given(
    before=st.lists(st.text(alphabet="abc19", min_size=1, max_size=4), max_size=3),
    after=st.lists(st.text(alphabet="abc19", min_size=1, max_size=4), max_size=3),
    dots=st.sampled_from(["..", "%2e%2e", "%2E%2e", ".%2E"]),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_dot_dot_path_is_never_allowed(before: list[str], after: list[str], dots: str, method: str) -> None:
    """Property: whatever the rights (here: everything granted, by '/**' too), a '..' segment is never allowed."""
    c = conf(AccessRight(LOANS, PERSONS_REST), AccessRight(LOANS, PERSONS_REST, method=method, path="/**"))
    local = LocalPolicy(grants=(LocalGrant(LOANS, PERSONS_REST, path="/**"),))
    path = "/" + "/".join([*before, dots, *after])
    assert decide(c, local, LOANS, PERSONS_REST, method=method, path=path).allowed is False


def test_unreadable_central_right_grants_nothing() -> None:
    """A central right with a malformed pattern is skipped (fail closed) and listed in the index for diagnostics."""
    c = conf(AccessRight(LOANS, PERSONS_REST, path="/files/report-*"), AccessRight(LOANS, GET_PERSON))
    assert decide(c, NO_LOCAL, LOANS, PERSONS_REST, method="GET", path="/files/report-1").allowed is False
    assert [n for n, _ in rights_index(c).invalid] == [1]
    assert decide(c, NO_LOCAL, LOANS, GET_PERSON).allowed is True


def test_evaluation_error_denies() -> None:
    """An unexpected exception during evaluation denies with a guard rule instead of propagating."""
    broken: Any = object()  # not a GlobalConf: indexing it fails
    decision = decide(broken, NO_LOCAL, LOANS, GET_PERSON)
    assert (decision.allowed, decision.rule) == (False, "guard:evaluation-error")


def test_index_is_built_once_per_conf_and_released_with_it() -> None:
    """The rights index is reused for the same conf object and dropped when the conf is garbage-collected."""
    c = conf(AccessRight(LOANS, GET_PERSON))
    first = rights_index(c)
    assert rights_index(c) is first
    key = id(c)
    assert key in _central_cache
    del c
    gc.collect()
    assert key not in _central_cache


def test_require_raises_access_denied_without_details() -> None:
    """Decision.require raises Server.ServerProxy.AccessDenied with X-Road's terse message (no rule details)."""
    decision = decide(conf(), NO_LOCAL, LOANS, GET_PERSON)
    with pytest.raises(AccessDenied) as info:
        decision.require(GET_PERSON)
    assert (info.value.fault_code, info.value.http_status, info.value.message) == (
        "Server.ServerProxy.AccessDenied",
        403,
        "Request is not allowed: SERVICE:AZ/GOV/1/population/getPerson",
    )
    decide(conf(AccessRight(LOANS, GET_PERSON)), NO_LOCAL, LOANS, GET_PERSON).require(GET_PERSON)  # no raise


def test_decision_as_dict() -> None:
    """Decisions serialise to plain data for the message log."""
    assert Decision(True, "because", "local:grant#1").as_dict() == {
        "allowed": True,
        "reason": "because",
        "rule": "local:grant#1",
    }


# allowed_services ----------------------------------------------------------------------------------------------


def test_allowed_services_lists_catalog_versions_and_narrowed_grants() -> None:
    """allowedMethods: catalog entries covered by any grant (narrowed ones too), minus whole-service local denies."""
    find = GOV.service("findPerson")
    secret = GOV.service("secret")
    c = conf(
        AccessRight(LOANS, GET_PERSON),
        AccessRight(BANKS, PERSONS_REST, method="GET", path="/persons/*"),
        AccessRight(LOANS, secret),
        AccessRight(OTHER, find),
        groups=(GlobalGroup(BANKS, "banks", members=(LOANS,)),),
        services=tuple(ServiceInfo(s, "SOAP") for s in (GET_PERSON_V1, GET_PERSON_V2, find, secret)),
    )
    local = LocalPolicy(
        grants=(LocalGrant(LOANS, GOV.service("extra", "v3")),),
        denies=(LocalDeny(LOANS, secret),),
    )
    assert allowed_services(c, local, LOANS, GOV) == [
        GOV.service("extra", "v3"),
        GET_PERSON_V1,
        GET_PERSON_V2,
        PERSONS_REST,
    ]
    assert allowed_services(c, local, LOANS, OTHER) == []


# LocalPolicy.from_mapping --------------------------------------------------------------------------------------


def test_from_mapping_builds_policy() -> None:
    """The YAML-shaped form loads into identifiers, upper-cased methods and ordered rules."""
    policy = LocalPolicy.from_mapping(
        {
            "groups": {"tax-officers": ["SUBSYSTEM:AZ/COM/9/loans", "MEMBER:AZ/COM/10"]},
            "grants": [
                {
                    "subject": "LOCALGROUP:tax-officers",
                    "service": "SERVICE:AZ/GOV/1/population/persons",
                    "method": "get",
                    "path": "/persons/*",
                }
            ],
            "denies": [
                {"subject": "GLOBALGROUP:AZ/banks", "service": "SERVICE:AZ/GOV/1/population/persons", "note": "no"}
            ],
        }
    )
    expected_members: frozenset[ClientId] = frozenset({LOANS, MemberId("AZ", "COM", "10")})
    assert dict(policy.groups) == {"tax-officers": expected_members}
    assert policy.grants == (LocalGrant(LocalGroupId("tax-officers"), PERSONS_REST, "GET", "/persons/*"),)
    assert policy.denies == (LocalDeny(BANKS, PERSONS_REST, note="no"),)
    assert LocalPolicy.from_mapping(None) == LocalPolicy()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grant": []}, "local policy: unknown key(s) grant"),
        ({"grants": [{"subject": "SUBSYSTEM:AZ/COM/9/loans"}]}, "local policy grants[0]: service is required"),
        (
            {"grants": [{"subject": "SUBSYSTEM:AZ/COM/9", "service": "SERVICE:AZ/GOV/1/population/persons"}]},
            "local policy grants[0].subject: subsystem identifier 'AZ/COM/9' must have 4 parts separated by '/'",
        ),
        (
            {"denies": [{"subject": "SERVICE:AZ/GOV/1/p/x", "service": "SERVICE:AZ/GOV/1/population/persons"}]},
            "local policy denies[0].subject: 'SERVICE:AZ/GOV/1/p/x' must be a MEMBER, SUBSYSTEM, GLOBALGROUP or "
            "LOCALGROUP identifier",
        ),
        (
            {"grants": [{"subject": "LOCALGROUP:nobody", "service": "SERVICE:AZ/GOV/1/population/persons"}]},
            "local policy grants[0].subject: local group 'nobody' is not defined",
        ),
        (
            {"grants": [{"subject": "MEMBER:AZ/COM/9", "service": "SUBSYSTEM:AZ/GOV/1/population"}]},
            "local policy grants[0].service: 'SUBSYSTEM:AZ/GOV/1/population' must be a SERVICE identifier",
        ),
        (
            {"grants": [{"subject": "MEMBER:AZ/COM/9", "service": "SERVICE:AZ/GOV/1/p/x", "method": "GE T"}]},
            "local policy grants[0].method: 'GE T' is not an HTTP method name",
        ),
        (
            {"denies": [{"subject": "MEMBER:AZ/COM/9", "service": "SERVICE:AZ/GOV/1/p/x", "path": "/a/../b"}]},
            "local policy denies[0].path: path pattern '/a/../b' is not a normalised path: it contains the "
            "dot-segment '..'",
        ),
        (
            {"groups": {"g": ["GLOBALGROUP:AZ/banks"]}},
            "local policy groups['g'][0]: 'GLOBALGROUP:AZ/banks' is not a MEMBER or SUBSYSTEM identifier",
        ),
        (
            {"grants": [{"subject": "MEMBER:AZ/COM/9", "service": "SERVICE:AZ/GOV/1/p/x", "colour": 1}]},
            "local policy grants[0]: unknown key(s) colour",
        ),
    ],
)
def test_from_mapping_errors_name_the_entry(data: dict[str, Any], message: str) -> None:
    """Every loading error is a ConfigError whose message names the offending entry."""
    with pytest.raises(ConfigError) as info:
        LocalPolicy.from_mapping(data)
    assert info.value.message == message


def test_local_policy_groups_are_a_snapshot() -> None:
    """Mutating the dict a policy was built from does not change the policy."""
    source = {"lenders": frozenset({LOANS})}
    policy = LocalPolicy(groups=source)
    source["lenders"] = frozenset()
    assert dict(policy.groups) == {"lenders": frozenset({LOANS})}


# Cost ----------------------------------------------------------------------------------------------------------


def big_conf(n_rights: int = 1000) -> tuple[GlobalConf, LocalPolicy]:
    """~n_rights central rights over 50 providers x 10 services, a mix of subsystem, member and group subjects."""
    rights: list[AccessRight] = []
    groups = []
    clients = [SubsystemId("AZ", "COM", str(i), "app") for i in range(200)]
    for g in range(10):
        groups.append(GlobalGroup(GlobalGroupId("AZ", f"g{g}"), "", members=tuple(clients[g * 20 : g * 20 + 20])))
    i = 0
    while len(rights) < n_rights:
        provider = SubsystemId("AZ", "GOV", str(i % 50), "svc")
        service = provider.service(f"s{(i // 50) % 10}")
        kind = i % 4
        subject: ClientId | GlobalGroupId
        if kind == 0:
            subject = groups[i % 10].id
        elif kind == 1:
            subject = clients[i % 200].member
        else:
            subject = clients[i % 200]
        rights.append(
            AccessRight(subject, service, method="GET" if kind == 3 else None, path="/items/*" if kind == 3 else None)
        )
        i += 1
    local = LocalPolicy(
        denies=(LocalDeny(clients[0], SubsystemId("AZ", "GOV", "0", "svc").service("s0"), path="/x/**"),)
    )
    return conf(*rights, groups=tuple(groups)), local


def test_decision_cost_with_1000_rights() -> None:
    """Decisions stay cheap with ~1000 rights: well under 1 ms each (measured: a few microseconds, see report)."""
    c, local = big_conf()

    def svc(provider: int) -> ServiceId:
        return SubsystemId("AZ", "GOV", str(provider), "svc").service("s0")

    def app(n: int) -> SubsystemId:
        return SubsystemId("AZ", "COM", str(n), "app")

    cases: dict[str, tuple[ClientId, ServiceId, str | None, str | None]] = {
        "direct": (app(2), svc(2), None, None),  # right #3 names the subsystem itself
        "group": (app(5), svc(0), None, None),  # right #1 names global group g0, which lists app 5
        "rest": (app(3), svc(3), "GET", "/items/9"),  # right #4 is narrowed to GET /items/*
        "default": (OTHER, svc(2), None, None),  # nothing names this client
    }
    outcomes = {name: decide(c, local, cl, sv, method=m, path=p).allowed for name, (cl, sv, m, p) in cases.items()}
    assert outcomes == {"direct": True, "group": True, "rest": True, "default": False}
    runs = 2000
    costs: dict[str, float] = {}
    for name, (cl, sv, m, p) in cases.items():
        costs[name] = timeit.timeit(lambda: decide(c, local, cl, sv, method=m, path=p), number=runs) / runs  # noqa: B023
    assert max(costs.values()) < 1e-3, costs
