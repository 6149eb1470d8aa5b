"""Identifiers: X-Road's model, strict character set, path, encoded and XML forms."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from bridge.errors import InvalidIdentifier
from bridge.identifiers import (
    ID_NS,
    GlobalGroupId,
    LocalGroupId,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
    XRoadId,
    from_xml,
    parse_client,
    parse_encoded,
    to_xml,
)

# Printable characters without X-Road's forbidden ones; whitespace and control characters are excluded too.
codes = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"), blacklist_characters=":;/\\%"
    ),
    min_size=1,
    max_size=20,
).filter(lambda code: code not in (".", ".."))
members = st.builds(MemberId, codes, codes, codes)
subsystems = st.builds(SubsystemId, codes, codes, codes, codes)
services = st.builds(ServiceId, subsystems, codes, st.none() | codes)
servers = st.builds(SecurityServerId, members, codes)
global_groups = st.builds(GlobalGroupId, codes, codes)
local_groups = st.builds(LocalGroupId, codes)
any_id = st.one_of(members, subsystems, services, servers, global_groups, local_groups)


@given(any_id)
def test_encoded_form_round_trips(ident: XRoadId) -> None:
    """Every identifier survives encoded form and back unchanged."""
    assert parse_encoded(ident.encoded()) == ident


@given(any_id)
def test_path_form_round_trips_per_type(ident: XRoadId) -> None:
    """Each type's own path parser reads back what path() wrote."""
    assert type(ident).parse(ident.path()) == ident


@given(any_id)
def test_xml_form_round_trips(ident: XRoadId) -> None:
    """The XML form survives serialisation to bytes and parsing back."""
    elem = to_xml(ident, "{http://x-road.eu/xsd/xroad.xsd}client", nsmap={"id": ID_NS})
    reparsed = etree.fromstring(etree.tostring(elem))
    assert from_xml(reparsed) == ident


def test_rest_path_examples() -> None:
    """The REST path forms in the X-Road specs parse into the expected parts."""
    sub = SubsystemId.parse("AZ/GOV/1400057421/population")
    assert (sub.instance, sub.member_class, sub.member_code, sub.subsystem_code) == (
        "AZ",
        "GOV",
        "1400057421",
        "population",
    )
    svc = ServiceId.parse("AZ/GOV/1400057421/population/getPerson/v1")
    assert svc.provider == sub
    assert (svc.service_code, svc.service_version) == ("getPerson", "v1")
    assert parse_client("AZ/GOV/1400057421") == MemberId("AZ", "GOV", "1400057421")
    assert parse_client("AZ/GOV/1400057421/population") == sub
    assert str(SecurityServerId.parse("AZ/GOV/1400057421/ss1")) == "SERVER:AZ/GOV/1400057421/ss1"


@pytest.mark.parametrize(
    "bad",
    [
        "AZ/GOV/14:00",
        "AZ/GOV/14;00",
        "AZ/GOV/14%2F00",
        "AZ/GOV/14\\00",
        "AZ/GOV/14 00",
        "AZ/GOV/\t1",
        "AZ//1",
        "AZ/GOV/1\x00",
    ],
)
def test_forbidden_characters_are_refused(bad: str) -> None:
    """X-Road's restricted characters, whitespace, control characters and empty codes are refused."""
    with pytest.raises(InvalidIdentifier):
        MemberId.parse(bad)


@pytest.mark.parametrize(
    ("cls", "text"),
    [
        (MemberId, "AZ/GOV"),
        (SubsystemId, "AZ/GOV/1"),
        (ServiceId, "AZ/GOV/1/sub"),
        (ServiceId, "AZ/GOV/1/sub/svc/v1/extra"),
        (SecurityServerId, "AZ/GOV/1"),
        (GlobalGroupId, "AZ"),
    ],
)
def test_wrong_part_count_is_refused(cls: type[MemberId], text: str) -> None:
    """A path with the wrong number of parts for its type is refused with a message naming the type."""
    with pytest.raises(InvalidIdentifier, match="parts"):
        cls.parse(text)


def test_too_long_code_is_refused() -> None:
    """Codes longer than 255 characters are refused."""
    with pytest.raises(InvalidIdentifier, match="longer"):
        MemberId("AZ", "GOV", "x" * 256)


@pytest.mark.parametrize("text", ["MEMBER", "BOGUS:AZ/GOV/1", "MEMBER:AZ/GOV", 42])
def test_bad_encoded_forms(text: object) -> None:
    """Encoded identifiers with no type, an unknown type or a wrong path are refused."""
    with pytest.raises(InvalidIdentifier):
        parse_encoded(text)  # type: ignore[arg-type]


def _xml(body: str, kind: str = "SUBSYSTEM") -> etree._Element:
    return etree.fromstring(f'<c xmlns:id="{ID_NS}" id:objectType="{kind}">{body}</c>'.encode())


def test_xml_with_missing_or_extra_fields_is_refused() -> None:
    """An XML identifier whose children do not fit its objectType exactly is refused."""
    ok = "<id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>GOV</id:memberClass><id:memberCode>1</id:memberCode>"
    assert from_xml(_xml(ok, "MEMBER")) == MemberId("AZ", "GOV", "1")
    with pytest.raises(InvalidIdentifier, match="lacks subsystemCode"):
        from_xml(_xml(ok, "SUBSYSTEM"))
    with pytest.raises(InvalidIdentifier, match="must not contain serverCode"):
        from_xml(_xml(ok + "<id:serverCode>x</id:serverCode>", "MEMBER"))
    with pytest.raises(InvalidIdentifier, match="objectType"):
        from_xml(_xml(ok, "NOPE"))
    swapped = (
        "<id:memberClass>GOV</id:memberClass><id:xRoadInstance>AZ</id:xRoadInstance><id:memberCode>1</id:memberCode>"
    )
    with pytest.raises(InvalidIdentifier, match="order"):
        from_xml(_xml(swapped, "MEMBER"))


def test_xml_form_validates_against_xroad_schema(tmp_path: Path) -> None:
    """The XML form of each client, service and server id is valid per X-Road's identifiers.xsd types."""
    xsd_dir = Path(__file__).resolve().parents[2] / "schemas" / "xroad"
    wrapper = tmp_path / "wrapper.xsd"
    wrapper.write_text(
        f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:id="{ID_NS}"
                targetNamespace="urn:test" elementFormDefault="qualified">
          <xs:import namespace="{ID_NS}" schemaLocation="{(xsd_dir / "identifiers.xsd").as_uri()}"/>
          <xs:element name="client" type="id:XRoadClientIdentifierType"/>
          <xs:element name="service" type="id:XRoadServiceIdentifierType"/>
          <xs:element name="server" type="id:XRoadSecurityServerIdentifierType"/>
        </xs:schema>"""
    )
    schema = etree.XMLSchema(etree.parse(str(wrapper)))
    cases: list[tuple[str, XRoadId]] = [
        ("client", SubsystemId.parse("AZ/GOV/1400057421/population")),
        ("client", MemberId.parse("AZ/GOV/1400057421")),
        ("service", ServiceId.parse("AZ/GOV/1/sub/svc/v1")),
        ("server", SecurityServerId.parse("AZ/GOV/1/ss1")),
    ]
    for tag, ident in cases:
        doc = etree.fromstring(etree.tostring(to_xml(ident, f"{{urn:test}}{tag}", nsmap={"id": ID_NS})))
        schema.assertValid(doc)
    # A service element lacking serviceCode is refused by the schema too, so the check above can fail.
    broken = to_xml(SubsystemId.parse("AZ/GOV/1/sub"), "{urn:test}service", nsmap={"id": ID_NS})
    assert schema.validate(broken) is False
