"""Configuration anchor: X-Road's anchor format, validation errors, hashing, and atomic save/load."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.anchor import AnchorSource, ConfigurationAnchor, ConfigurationSource
from bridge.errors import AnchorInvalid
from tests.support.globalconf import make_signer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "globalconf" / "xroad-anchor-example.xml"


def _anchor_xml(body: str, root: str = "tns:configurationAnchor") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns:tns="http://x-road.eu/xsd/xroad.xsd">{body}</{root}>'
    ).encode()


def _cert_b64() -> str:
    return base64.b64encode(make_signer().cert.public_bytes(Encoding.DER)).decode()


def test_parses_the_xroad_test_fixture() -> None:
    """X-Road's own anchor fixture parses: instance, the three sources in order, and their certificates."""
    anchor = ConfigurationAnchor.load(FIXTURE)
    assert anchor.instance == "EE"
    assert anchor.generated_at is None
    assert [s.download_url for s in anchor.sources] == [
        "http://www.bar.com/conf",
        "http://node-0x.example.com/internalconf",
        "http://node-1x.example.com/internalconf",
    ]
    assert [len(s.verification_certs) for s in anchor.sources] == [2, 1, 1]
    serials = [c.serial_number for c in anchor.sources[0].verification_certs]
    assert serials == [0x4D9AD677FA956116, 0x5E834B75B33D94CF]
    assert len(anchor.verification_certs) == 4


def test_sha256_is_the_hash_of_the_file_bytes() -> None:
    """The hash operators compare out of band is the SHA-256 of the exact file, and to_bytes() returns that file."""
    data = FIXTURE.read_bytes()
    anchor = ConfigurationAnchor.from_bytes(data)
    assert anchor.to_bytes() == data
    assert anchor.sha256 == hashlib.sha256(data).hexdigest()


def test_built_anchor_round_trips_and_saves_atomically(tmp_path: Path) -> None:
    """An anchor built in code serialises to X-Road's format, saves, and loads back equal (with generatedAt)."""
    signer = make_signer()
    anchor = ConfigurationAnchor(
        "AZ",
        (AnchorSource("https://central.example.az/globalconf", (signer.cert,)),),
        generated_at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    path = tmp_path / "anchor.xml"
    anchor.save(path)
    loaded = ConfigurationAnchor.load(path)
    assert loaded == anchor
    assert loaded.sha256 == anchor.sha256
    assert b"<generatedAt>2030-01-02T03:04:05Z</generatedAt>" in path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["anchor.xml"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not xml", "configuration anchor is not well-formed XML"),
        (_anchor_xml("", root="tns:somethingElse"), "anchor root element must be"),
        (_anchor_xml("<instanceIdentifier>AZ</instanceIdentifier>"), "anchor has no configuration source"),
        (
            _anchor_xml(
                "<instanceIdentifier>AZ</instanceIdentifier><source><downloadURL>http://x/c</downloadURL>"
                "<verificationCert>@@not base64@@</verificationCert></source>"
            ),
            "anchor source 1, verificationCert 1 is not valid base64",
        ),
        (
            _anchor_xml(
                "<instanceIdentifier>AZ</instanceIdentifier><source><downloadURL>http://x/c</downloadURL>"
                "<verificationCert>aGVsbG8=</verificationCert></source>"
            ),
            "anchor source 1, verificationCert 1 is not a DER X.509 certificate",
        ),
        (
            _anchor_xml(
                "<instanceIdentifier>AZ</instanceIdentifier><source><downloadURL>ftp://x/c</downloadURL>"
                f"<verificationCert>{_cert_b64()}</verificationCert></source>"
            ),
            "anchor downloadURL 'ftp://x/c' must be an http or https URL",
        ),
        (
            _anchor_xml(
                "<instanceIdentifier>A/Z</instanceIdentifier><source><downloadURL>http://x/c</downloadURL>"
                f"<verificationCert>{_cert_b64()}</verificationCert></source>"
            ),
            "anchor instanceIdentifier is invalid",
        ),
        (
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            + _anchor_xml("<instanceIdentifier>&x;</instanceIdentifier>").split(b"?>", 1)[1],
            "configuration anchor must not contain a document type declaration",
        ),
    ],
    ids=["not-xml", "wrong-root", "no-source", "bad-base64", "not-a-cert", "ftp-url", "bad-instance", "xxe"],
)
def test_invalid_anchors_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    """Each defect raises AnchorInvalid (Server.InvalidAnchor) with a message naming the defect."""
    with pytest.raises(AnchorInvalid) as info:
        ConfigurationAnchor.from_bytes(data)
    assert info.value.message.startswith(message)
    assert info.value.fault_code == "Server.InvalidAnchor"


def test_schema_violation_is_reported_with_the_schema_message() -> None:
    """A structural defect the explicit checks do not name (a source without downloadURL) fails schema validation."""
    data = _anchor_xml(
        f"<instanceIdentifier>AZ</instanceIdentifier><source><verificationCert>{_cert_b64()}</verificationCert>"
        "</source>"
    )
    with pytest.raises(AnchorInvalid) as info:
        ConfigurationAnchor.from_bytes(data)
    assert info.value.message.startswith("anchor does not match configuration-anchor.xsd: line 1: Element")
    assert "downloadURL" in info.value.message


def test_missing_file_is_anchor_invalid(tmp_path: Path) -> None:
    """A missing anchor file is AnchorInvalid naming the path, not a bare OSError."""
    with pytest.raises(AnchorInvalid) as info:
        ConfigurationAnchor.load(tmp_path / "nope.xml")
    assert str(tmp_path / "nope.xml") in info.value.message


def test_sources_given_as_a_list_are_stored_as_a_tuple() -> None:
    """An anchor built from a list of sources (ConfigurationSource alias) is stored immutably and round-trips."""
    cert = make_signer().cert
    built = ConfigurationAnchor.create("AZ", [ConfigurationSource("http://127.0.0.1:1/globalconf", (cert,))])
    assert built.generated_at is not None
    assert built.generated_at.microsecond == 0
    assert built.sources == (AnchorSource("http://127.0.0.1:1/globalconf", (cert,)),)
    assert ConfigurationAnchor.from_bytes(built.to_bytes()) == built
