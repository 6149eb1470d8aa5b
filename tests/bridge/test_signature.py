"""Message signatures: detached XML-DSig over part digests, verified by us and by xmlsec1."""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from bridge.errors import PkiError, SignatureInvalid
from bridge.pki.keys import PrivateKey
from bridge.signature import (
    DS_NS,
    SIGNATURE_ECDSA_SHA256,
    SIGNATURE_RSA_SHA256,
    MessageSigner,
    Part,
    part_digest,
    verify_signature,
    verify_signature_details,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
PARTS: dict[str, bytes] = {
    "message": b'{"method":"GET","path":"/r1/AZ/GOV/1/tax/debts"}',
    "body": b"",
    "attachment-1": bytes(range(256)) * 4,
}


@dataclass(frozen=True)
class Signer:
    key: PrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject_key: PrivateKey, cn: str, issuer_key: PrivateKey, issuer: x509.Name, ca: bool) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca() -> tuple[PrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _issue(key, "Test CA", key, _name("Test CA"), ca=True)


def _signer(ca: tuple[PrivateKey, x509.Certificate], key: PrivateKey) -> Signer:
    ca_key, ca_cert = ca
    return Signer(key, _issue(key, "member signing", ca_key, ca_cert.subject, ca=False), ca_cert)


@pytest.fixture(scope="module")
def ec_signer(ca: tuple[PrivateKey, x509.Certificate]) -> Signer:
    return _signer(ca, ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def rsa_signer(ca: tuple[PrivateKey, x509.Certificate]) -> Signer:
    return _signer(ca, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(params=["ec", "rsa"])
def signer(request: pytest.FixtureRequest) -> Signer:
    return request.getfixturevalue(f"{request.param}_signer")  # type: ignore[no-any-return]


def digests(parts: Mapping[str, bytes] = PARTS) -> dict[str, bytes]:
    return {name: part_digest(data) for name, data in parts.items()}


def sign(s: Signer, parts: Mapping[str, bytes] = PARTS, **kwargs: dt.datetime) -> bytes:
    return MessageSigner(s.key, s.cert).sign([Part(n, d) for n, d in digests(parts).items()], **kwargs)


def assert_invalid(signature: bytes, parts: Mapping[str, bytes], fragment: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify_signature(signature, parts)
    assert info.value.fault_code == "Server.InvalidSignatureValue"
    assert fragment in info.value.message


# Our verifier ----------------------------------------------------------------------------------------------------


def test_round_trip_returns_signer_cert(signer: Signer) -> None:
    """A signature made by MessageSigner verifies and yields the certificate from KeyInfo (EC and RSA keys)."""
    assert verify_signature(sign(signer), digests()) == signer.cert


def test_signature_method_follows_key_type(ec_signer: Signer, rsa_signer: Signer) -> None:
    """P-256 keys sign with ecdsa-sha256, RSA keys with rsa-sha256."""
    assert MessageSigner(ec_signer.key, ec_signer.cert).signature_method == SIGNATURE_ECDSA_SHA256
    assert MessageSigner(rsa_signer.key, rsa_signer.cert).signature_method == SIGNATURE_RSA_SHA256


def test_details_carry_chain_and_signing_time(ec_signer: Signer) -> None:
    """Chain certificates come back in order after the signer, and a signing time round-trips exactly."""
    signature = MessageSigner(ec_signer.key, ec_signer.cert, [ec_signer.ca_cert]).sign(
        [Part(n, d) for n, d in digests().items()], signing_time=NOW
    )
    details = verify_signature_details(signature, digests())
    assert (details.cert, details.chain, details.signing_time) == (ec_signer.cert, (ec_signer.ca_cert,), NOW)


def test_template_is_exclusive_canonical_form(ec_signer: Signer) -> None:
    """The SignedInfo text written by the template equals lxml's exc-c14n of it, so signing needs no c14n."""
    signature = sign(ec_signer, signing_time=NOW)
    root = etree.fromstring(signature)
    canonical = etree.tostring(root[0], method="c14n", exclusive=True)
    inner = signature[
        signature.index(b"<ds:SignedInfo>") + len(b"<ds:SignedInfo>") : signature.index(b"</ds:SignedInfo>")
    ]
    assert canonical == b'<ds:SignedInfo xmlns:ds="' + DS_NS.encode() + b'">' + inner + b"</ds:SignedInfo>"
    assert etree.tostring(root, method="c14n", exclusive=True) == signature


def test_flipped_part_byte_names_the_part(ec_signer: Signer) -> None:
    """A part whose bytes changed fails with a message naming that part."""
    tampered = dict(PARTS, **{"attachment-1": b"\x01" + PARTS["attachment-1"][1:]})
    assert_invalid(sign(ec_signer), digests(tampered), "digest of part 'attachment-1' does not match")


def test_missing_extra_and_renamed_parts(ec_signer: Signer) -> None:
    """The reference set must equal the message's parts: missing, extra and renamed parts all fail."""
    signature = sign(ec_signer)
    given = digests()
    assert_invalid(signature, {k: v for k, v in given.items() if k != "body"}, "signed parts not in the message: body")
    assert_invalid(signature, {**given, "attachment-2": part_digest(b"x")}, "parts not signed: attachment-2")
    renamed = {("body-2" if k == "body" else k): v for k, v in given.items()}
    assert_invalid(signature, renamed, "parts not signed: body-2; signed parts not in the message: body")


def test_tampered_signature_value(signer: Signer) -> None:
    """A signature value with one bit flipped does not verify."""
    signature = sign(signer)
    root = etree.fromstring(signature)
    value_elem = root.find(f"{{{DS_NS}}}SignatureValue")
    assert value_elem is not None
    value = bytearray(base64.b64decode(value_elem.text or ""))
    value[5] ^= 0x01
    value_elem.text = base64.b64encode(bytes(value)).decode()
    assert_invalid(etree.tostring(root), digests(), "signature value does not verify")


def test_swapped_certificate(ec_signer: Signer, rsa_signer: Signer, ca: tuple[PrivateKey, x509.Certificate]) -> None:
    """Another member's certificate in KeyInfo fails: same key type by value, other key type by method."""
    other_ec = _signer(ca, ec.generate_private_key(ec.SECP256R1()))
    signature = sign(ec_signer)
    for replacement, fragment in (
        (other_ec.cert, "signature value does not verify"),
        (rsa_signer.cert, "signature method does not match"),
    ):
        old = base64.b64encode(ec_signer.cert.public_bytes(serialization.Encoding.DER))
        new = base64.b64encode(replacement.public_bytes(serialization.Encoding.DER))
        assert_invalid(signature.replace(old, new), digests(), fragment)


def test_der_encoded_ecdsa_value_is_refused(ec_signer: Signer) -> None:
    """ECDSA values must be XML-DSig's raw r||s; a DER-encoded value (what OpenSSL emits) is refused."""
    signature = sign(ec_signer)
    root = etree.fromstring(signature)
    si = etree.tostring(root[0], method="c14n", exclusive=True)
    assert isinstance(ec_signer.key, ec.EllipticCurvePrivateKey)
    der = ec_signer.key.sign(si, ec.ECDSA(hashes.SHA256()))
    root[1].text = base64.b64encode(der).decode()
    assert_invalid(etree.tostring(root), digests(), "signature value does not verify")


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (b"xmldsig-more#ecdsa-sha256", b"xmldsig-more#rsa-sha256", "signature method does not match"),
        (b"xmldsig-more#ecdsa-sha256", b"xmldsig#hmac-sha1", "signature method must be"),
        (b"xmlenc#sha512", b"xmlenc#sha256", "digest method must be SHA-512"),
        (b"xml-exc-c14n#", b"xml-c14n-20010315", "canonicalization method must be exclusive"),
        (b'<ds:Reference URI="body">', b'<ds:Reference URI="../body">', "URI must be a part name"),
        (b"</ds:KeyInfo>", b"</ds:KeyInfo><ds:Object>x</ds:Object>", "signing-time Object and its reference"),
        (b"<ds:SignedInfo>", b"<ds:SignedInfo><!-- c -->", "must hold CanonicalizationMethod"),
        (
            b'<ds:Reference URI="body">',
            b'<ds:Reference URI="body"><ds:Transforms><ds:Transform Algorithm="x"></ds:Transform></ds:Transforms>',
            "must hold only DigestMethod and DigestValue",
        ),
    ],
)
def test_unexpected_structure_or_algorithm(ec_signer: Signer, old: bytes, new: bytes, fragment: str) -> None:
    """Only the exact algorithms and structure Körpü writes are accepted; each deviation says what is wrong."""
    signature = sign(ec_signer)
    assert old in signature
    assert_invalid(signature.replace(old, new, 1), digests(), fragment)


def test_doctype_injection_refused(ec_signer: Signer) -> None:
    """A DOCTYPE (entity expansion, XXE) is refused before anything else is looked at."""
    signature = sign(ec_signer)
    evil = b'<!DOCTYPE ds:Signature [<!ENTITY x "y">]>' + signature
    assert_invalid(evil, digests(), "document type declaration")
    xxe = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    assert_invalid(xxe, digests(), "document type declaration")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not well-formed"),
        (b"\xff\xfe garbage", "not well-formed"),
        (b"<a/>", "must be a ds:Signature"),
        (b"<x>" * 20 + b"</x>" * 20, "nested deeper"),
        (b" " * (64 * 1024 + 1), "larger than"),
    ],
)
def test_malformed_input_fails_closed(data: bytes, fragment: str) -> None:
    """Garbage, wrong roots, deep nesting and oversized input raise SignatureInvalid, never anything else."""
    assert_invalid(data, digests(), fragment)


def test_tampered_signing_time(ec_signer: Signer) -> None:
    """The signing time is covered by the signature: changing it breaks its reference's digest."""
    signature = sign(ec_signer, signing_time=NOW)
    stamp = NOW.isoformat(timespec="microseconds").replace("+00:00", "Z").encode()
    later = (NOW + dt.timedelta(hours=1)).isoformat(timespec="microseconds").replace("+00:00", "Z").encode()
    assert_invalid(signature.replace(stamp, later), digests(), "digest of the signing time does not match")


def test_signer_refuses_bad_input(ec_signer: Signer, rsa_signer: Signer) -> None:
    """The signer refuses a key that does not match the certificate, no parts, bad names and non-SHA-512 digests."""
    with pytest.raises(PkiError):
        MessageSigner(ec_signer.key, rsa_signer.cert)
    signer = MessageSigner(ec_signer.key, ec_signer.cert)
    for parts, fragment in (
        ([], "at least one part"),
        ([Part("Body", part_digest(b""))], "part name must match"),
        ([Part("a", part_digest(b"")), Part("a", part_digest(b""))], "listed twice"),
        ([Part("a", b"\x00" * 32)], "digest must be 64 bytes"),
    ):
        with pytest.raises(ValueError, match=fragment):
            signer.sign(parts)
    with pytest.raises(ValueError, match="timezone-aware"):
        signer.sign([Part("a", part_digest(b""))], signing_time=dt.datetime(2025, 1, 1))


# xmlsec1 ---------------------------------------------------------------------------------------------------------

XMLSEC1 = shutil.which("xmlsec1")
needs_xmlsec1 = pytest.mark.skipif(XMLSEC1 is None, reason="xmlsec1 not installed (make system-deps)")


def run_xmlsec1(directory: Path, signature: bytes, parts: Mapping[str, bytes], ca_cert: x509.Certificate) -> str:
    """Write the parts as files named by their Reference URIs and verify with xmlsec1 against the CA."""
    for name, data in parts.items():
        (directory / name).write_bytes(data)
    (directory / "signature.xml").write_bytes(signature)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    assert XMLSEC1 is not None
    # xmlsec1 resolves a relative Reference URI against the working directory (not the signature's location), and
    # classifies it as "remote" for --enabled-reference-uris, so it runs in the directory with no URI restriction.
    result = subprocess.run(
        [XMLSEC1, "--verify", "--trusted-pem", "ca.pem", "signature.xml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


@needs_xmlsec1
@pytest.mark.parametrize("with_time", [False, True])
def test_xmlsec1_verifies(signer: Signer, tmp_path: Path, with_time: bool) -> None:
    """xmlsec1 verifies our signature (EC and RSA, with and without signing time) against the CA certificate."""
    signature = sign(signer, signing_time=NOW) if with_time else sign(signer)
    output = run_xmlsec1(tmp_path, signature, PARTS, signer.ca_cert)
    refs = len(PARTS) + (1 if with_time else 0)
    assert output.splitlines()[:3] == ["rc=0", "OK", f"SignedInfo References (ok/all): {refs}/{refs}"]


@needs_xmlsec1
def test_xmlsec1_and_we_reject_flipped_byte(signer: Signer, tmp_path: Path) -> None:
    """One flipped byte in one part file: xmlsec1 fails, and so does verify_signature on the same bytes."""
    signature = sign(signer)
    tampered = dict(PARTS, message=b"X" + PARTS["message"][1:])
    output = run_xmlsec1(tmp_path, signature, tampered, signer.ca_cert)
    lines = output.splitlines()
    # xmlsec1 stops at the first failing reference; "message" is the first one.
    assert (lines[0], "OK" in lines, "SignedInfo References (ok/all): 0/1" in lines) == ("rc=1", False, True)
    assert_invalid(signature, digests(tampered), "digest of part 'message' does not match")
