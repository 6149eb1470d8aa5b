"""Global configuration XML: serialisation round trip, signing, verification, and safe XML parsing.

Shared helpers (``make_signer``, ``make_anchor``, ``sample_conf``) live in :mod:`tests.support.globalconf`.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.errors import (
    GlobalConfExpired,
    GlobalConfMalformed,
    GlobalConfSignatureInvalid,
    KorpuError,
)
from bridge.globalconf import (
    AccessRight,
    ApprovedCA,
    GlobalConf,
    GlobalConfParams,
    GlobalGroup,
    MemberInfo,
    SecurityServerInfo,
    ServiceInfo,
    TimestampingService,
)
from bridge.globalconf_xml import (
    GC_NS,
    MAX_GLOBALCONF_BYTES,
    from_xml,
    sign,
    to_xml,
    validate_schema,
    verify_and_parse,
)
from bridge.identifiers import GlobalGroupId, MemberId, SecurityServerId, SubsystemId
from bridge.xmlsafe import parse_xml
from tests.support.globalconf import NOW, Signer, make_anchor, make_signer, sample_conf

# Round trip ----------------------------------------------------------------------------------------------------

_CERTS = (make_signer("A").der, make_signer("B").der)
_code = st.text(alphabet="abcXYZ019-_.é", min_size=1, max_size=6).filter(lambda c: c not in (".", ".."))
_free_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Co")), max_size=12)
_url = st.builds(lambda c: f"https://{c}.example.az/x", st.text(alphabet="abc", min_size=1, max_size=5))
_member = st.builds(MemberId, st.just("AZ"), _code, _code)
_subsystem = st.builds(SubsystemId, st.just("AZ"), _code, _code, _code)
_client = st.one_of(_member, _subsystem)
_service_id = st.builds(lambda s, c, v: s.service(c, v), _subsystem, _code, st.none() | _code)
_der = st.sampled_from(_CERTS)
_small = {"max_size": 2}


@st.composite
def _confs(draw: st.DrawFn) -> GlobalConf:
    generated = draw(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1)))
    generated = generated.replace(tzinfo=dt.UTC)
    seconds = st.integers(min_value=1, max_value=86400)
    return GlobalConf(
        instance="AZ",
        version=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        generated_at=generated,
        expires_at=generated + dt.timedelta(seconds=draw(seconds), microseconds=draw(st.integers(0, 999999))),
        central_server_url=draw(_url),
        params=GlobalConfParams(draw(seconds), draw(seconds), draw(seconds)),
        members=tuple(draw(st.lists(st.builds(MemberInfo, _member, _free_text, st.tuples(_code)), **_small))),
        servers=tuple(
            draw(
                st.lists(
                    st.builds(
                        SecurityServerInfo,
                        st.builds(SecurityServerId, _member, _code),
                        st.just("ss.example.az:5500"),
                        st.tuples(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
                        st.lists(_client, **_small).map(tuple),
                    ),
                    **_small,
                )
            )
        ),
        cas=tuple(
            draw(
                st.lists(
                    st.builds(
                        ApprovedCA, _free_text, _der, st.tuples(_der), st.tuples(_url), st.tuples() | st.tuples(_der)
                    ),
                    **_small,
                )
            )
        ),
        tsas=tuple(draw(st.lists(st.builds(TimestampingService, _free_text, _url, _der), **_small))),
        groups=tuple(
            draw(
                st.lists(
                    st.builds(
                        GlobalGroup,
                        st.builds(GlobalGroupId, st.just("AZ"), _code),
                        _free_text,
                        st.lists(_client, **_small).map(tuple),
                    ),
                    **_small,
                )
            )
        ),
        services=tuple(
            draw(
                st.lists(
                    st.builds(
                        ServiceInfo,
                        _service_id,
                        st.sampled_from(["REST", "SOAP", "OPENAPI3"]),
                        _free_text,
                        st.none() | _url,
                    ),
                    **_small,
                )
            )
        ),
        access_rights=tuple(
            draw(
                st.lists(
                    st.builds(
                        AccessRight,
                        st.one_of(_client, st.builds(GlobalGroupId, st.just("AZ"), _code)),
                        _service_id,
                        st.none() | st.sampled_from(["GET", "POST"]),
                        st.none() | st.just("/persons/*"),
                    ),
                    **_small,
                )
            )
        ),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_confs())
def test_round_trip_through_xml_bytes_is_lossless(conf: GlobalConf) -> None:
    """to_xml → bytes → safe parse → schema → from_xml gives back an equal GlobalConf, for generated confs."""
    data = etree.tostring(to_xml(conf), encoding="UTF-8")
    root = parse_xml(data, max_bytes=MAX_GLOBALCONF_BYTES, error=GlobalConfMalformed)
    validate_schema(root)
    assert from_xml(root) == conf


def test_sample_conf_round_trips_with_every_collection_filled() -> None:
    """The hand-written sample (non-ASCII names, versioned service, group subject) round-trips exactly."""
    conf = sample_conf()
    root = to_xml(conf)
    validate_schema(root)
    assert from_xml(root) == conf


def _retype(xml: bytes, old: str, new: str) -> bytes:
    assert old.encode() in xml
    return xml.replace(old.encode(), new.encode(), 1)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A member whose id says SUBSYSTEM is not a member.
        ('<gc:member><gc:id id:objectType="MEMBER">', '<gc:member><gc:id id:objectType="SUBSYSTEM">', "member id"),
        # A server's id must be a SERVER.
        ('<gc:id id:objectType="SERVER">', '<gc:id id:objectType="MEMBER">', "security server id"),
        # A global-group subject with a LOCALGROUP type is refused.
        ('<gc:subject id:objectType="GLOBALGROUP">', '<gc:subject id:objectType="LOCALGROUP">', "access right"),
    ],
)
def test_from_xml_refuses_identifiers_of_the_wrong_type(old: str, new: str, message: str) -> None:
    """from_xml checks each identifier's object type (and its fields) for the place it appears in."""
    xml = _retype(etree.tostring(to_xml(sample_conf())), old, new)
    with pytest.raises(GlobalConfMalformed) as info:
        from_xml(etree.fromstring(xml))
    assert message in info.value.message


def test_from_xml_refuses_unknown_elements_without_schema() -> None:
    """Even without schema validation, an unexpected element makes the document malformed (fails closed)."""
    root = to_xml(sample_conf())
    etree.SubElement(root, f"{{{GC_NS}}}surprise")
    with pytest.raises(GlobalConfMalformed) as info:
        from_xml(root)
    assert info.value.message == "globalConf: unexpected element surprise"


def test_to_xml_refuses_naive_datetimes() -> None:
    """Timestamps without a time zone cannot be written as UTC; to_xml refuses them instead of guessing."""
    conf = replace(sample_conf(), generated_at=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="generated_at must be timezone-aware"):
        to_xml(conf)


# Signing and verification --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


@pytest.fixture(scope="module")
def signed(signer: Signer) -> bytes:
    return sign(sample_conf(7), signer.key, signer.cert)


def test_verify_accepts_a_signed_conf_and_returns_it(signer: Signer, signed: bytes) -> None:
    """A document signed by the anchor's certificate verifies and parses back to the signed configuration."""
    conf = verify_and_parse(signed, anchor=make_anchor(signer), now=NOW)
    assert conf == sample_conf(7)


def test_signature_format_is_enveloped_exc_c14n_ecdsa_sha256(signer: Signer, signed: bytes) -> None:
    """The signature is the root's last child, references the whole document and uses the documented algorithms."""
    root = etree.fromstring(signed)
    ds = "{http://www.w3.org/2000/09/xmldsig#}"
    sig = root[-1]
    assert sig.tag == f"{ds}Signature"
    assert sig.find(f"{ds}SignedInfo/{ds}CanonicalizationMethod").get("Algorithm") == (
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    )
    assert sig.find(f"{ds}SignedInfo/{ds}SignatureMethod").get("Algorithm") == (
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
    )
    refs = sig.findall(f"{ds}SignedInfo/{ds}Reference")
    assert [r.get("URI") for r in refs] == [""]
    assert [t.get("Algorithm") for t in refs[0].find(f"{ds}Transforms")] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ]
    assert refs[0].find(f"{ds}DigestMethod").get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#sha256"
    cert_text = sig.findtext(f"{ds}KeyInfo/{ds}X509Data/{ds}X509Certificate")
    assert base64.b64decode("".join(cert_text.split())) == signer.der


def test_rsa_key_signs_with_rsa_sha256() -> None:
    """An RSA signing key produces an rsa-sha256 signature that verifies against its certificate."""
    rsa_signer = make_signer(rsa_key=True)
    data = sign(sample_conf(3), rsa_signer.key, rsa_signer.cert)
    assert b"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" in data
    assert verify_and_parse(data, anchor=make_anchor(rsa_signer), now=NOW).version == 3


def test_any_anchor_certificate_may_have_signed(signer: Signer, signed: bytes) -> None:
    """With several verification certificates in the anchor, the one that matches is used."""
    anchor = make_anchor(make_signer("other"), signer)
    assert verify_and_parse(signed, anchor=anchor, now=NOW).version == 7


def test_one_byte_changed_anywhere_in_the_signed_document_is_refused(signer: Signer, signed: bytes) -> None:
    """Flipping the lowest bit of any byte of the globalConf element (content, signature, KeyInfo) is refused.

    The XML declaration before the root element is not part of any XML-DSig signature by design (a parser consumes
    it), so positions start at the root's start tag.
    """
    anchor = make_anchor(signer)
    start = signed.index(b"<gc:globalConf")
    accepted = []
    for pos in range(start, len(signed)):
        tampered = signed[:pos] + bytes([signed[pos] ^ 0x01]) + signed[pos + 1 :]
        try:
            verify_and_parse(tampered, anchor=anchor, now=NOW)
        except (GlobalConfSignatureInvalid, GlobalConfMalformed):
            continue
        accepted.append(pos)
    assert accepted == []


def test_signed_by_a_key_not_in_the_anchor_is_refused(signed: bytes) -> None:
    """A valid signature by a certificate the anchor does not list is GlobalConfSignatureInvalid."""
    with pytest.raises(GlobalConfSignatureInvalid) as info:
        verify_and_parse(signed, anchor=make_anchor(make_signer("stranger")), now=NOW)
    assert info.value.fault_code == "Server.InvalidGlobalConfSignature"


def test_keyinfo_certificate_swapped_for_another_is_refused(signer: Signer, signed: bytes) -> None:
    """The unsigned KeyInfo must name the anchor certificate that verified; another certificate there is refused."""
    ours = base64.b64encode(signer.der).decode()
    theirs = base64.b64encode(make_signer("x").der).decode()
    text = etree.fromstring(signed).findtext(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
    tampered = signed.replace(text.encode(), theirs.encode())
    assert "".join(text.split()) == ours
    with pytest.raises(GlobalConfSignatureInvalid, match="KeyInfo certificate is not the anchor certificate"):
        verify_and_parse(tampered, anchor=make_anchor(signer), now=NOW)


def test_unsigned_document_is_refused(signer: Signer) -> None:
    """A well-formed, schema-valid document without a signature is GlobalConfSignatureInvalid."""
    data = etree.tostring(to_xml(sample_conf()), xml_declaration=True, encoding="UTF-8")
    with pytest.raises(GlobalConfSignatureInvalid):
        verify_and_parse(data, anchor=make_anchor(signer), now=NOW)


def test_expired_conf_raises_outdated_globalconf(signer: Signer, signed: bytes) -> None:
    """At or after expiresAt the document is GlobalConfExpired (Server.OutdatedGlobalConf) unless allowed."""
    anchor = make_anchor(signer)
    at_expiry = NOW + dt.timedelta(minutes=10)
    with pytest.raises(GlobalConfExpired) as info:
        verify_and_parse(signed, anchor=anchor, now=at_expiry)
    assert info.value.fault_code == "Server.OutdatedGlobalConf"
    assert verify_and_parse(signed, anchor=anchor, now=at_expiry, allow_expired=True).version == 7
    assert verify_and_parse(signed, anchor=anchor, now=at_expiry - dt.timedelta(microseconds=1)).version == 7


def test_wrong_instance_is_refused(signer: Signer) -> None:
    """A correctly signed document for another instance than the anchor's is GlobalConfMalformed."""
    data = sign(sample_conf(instance="EE"), signer.key, signer.cert)
    with pytest.raises(GlobalConfMalformed) as info:
        verify_and_parse(data, anchor=make_anchor(signer, instance="AZ"), now=NOW)
    assert info.value.message == "global configuration is for instance 'EE', the anchor for 'AZ'"


def test_anchor_certificate_outside_validity_at_now_is_refused(signed: bytes) -> None:
    """The anchor certificate must be valid at `now`: an expired verification certificate is refused."""
    old = make_signer(
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), not_after=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    )
    data = sign(sample_conf(), old.key, old.cert)
    with pytest.raises(GlobalConfSignatureInvalid):
        verify_and_parse(data, anchor=make_anchor(old), now=NOW)


def test_schema_violation_in_a_signed_document_is_malformed(signer: Signer) -> None:
    """Signed content that breaks globalconf.xsd is GlobalConfMalformed with the schema's message."""
    from signxml import CanonicalizationMethod, SignatureMethod, XMLSigner

    root = to_xml(sample_conf())
    root.find(f"{{{GC_NS}}}service/{{{GC_NS}}}type").text = "GRPC"
    xml_signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    pem = signer.cert.public_bytes(Encoding.PEM).decode()
    data = etree.tostring(xml_signer.sign(root, key=signer.key, cert=[pem]))
    with pytest.raises(GlobalConfMalformed) as info:
        verify_and_parse(data, anchor=make_anchor(signer), now=NOW)
    assert "does not match globalconf.xsd" in info.value.message
    assert "GRPC" in info.value.message


# Signature wrapping --------------------------------------------------------------------------------------------


def test_signed_root_moved_into_a_wrapper_is_refused(signer: Signer, signed: bytes) -> None:
    """Wrapping the signed globalConf inside an attacker's globalConf root does not verify."""
    evil = etree.tostring(to_xml(sample_conf(99)))
    inner = signed.split(b"?>", 1)[1]
    wrapped = evil.replace(b"</gc:globalConf>", inner + b"</gc:globalConf>")
    with pytest.raises((GlobalConfSignatureInvalid, GlobalConfMalformed)):
        verify_and_parse(wrapped, anchor=make_anchor(signer), now=NOW)


def test_signature_moved_to_an_unsigned_root_is_refused(signer: Signer, signed: bytes) -> None:
    """Moving the valid ds:Signature onto a different (unsigned) globalConf is refused: the digest covers the root."""
    original = etree.fromstring(signed)
    evil = to_xml(sample_conf(99))
    evil.append(original[-1])
    evil.append(original)  # the genuine signed document, tucked inside, as in classic wrapping attacks
    with pytest.raises((GlobalConfSignatureInvalid, GlobalConfMalformed)):
        verify_and_parse(etree.tostring(evil), anchor=make_anchor(signer), now=NOW)


def test_second_unsigned_globalconf_added_is_refused(signer: Signer, signed: bytes) -> None:
    """An extra, unsigned globalConf (or member) inserted into the signed root breaks the digest."""
    extra = etree.tostring(to_xml(sample_conf(99)))
    tampered = signed.replace(b"<ds:Signature", extra + b"<ds:Signature", 1)
    with pytest.raises(GlobalConfSignatureInvalid):
        verify_and_parse(tampered, anchor=make_anchor(signer), now=NOW)


def test_signature_in_a_nested_position_is_not_searched_for(signer: Signer, signed: bytes) -> None:
    """Only a ds:Signature that is a direct child of the root is considered; one deeper in the tree is ignored."""
    root = etree.fromstring(signed)
    sig = root[-1]
    root.find(f"{{{GC_NS}}}member").append(sig)
    with pytest.raises(GlobalConfSignatureInvalid):
        verify_and_parse(etree.tostring(root), anchor=make_anchor(signer), now=NOW)


def test_doctype_in_a_signed_document_is_refused(signer: Signer, signed: bytes) -> None:
    """A DOCTYPE (here an XXE attempt) prepended to a valid signed document makes it GlobalConfMalformed."""
    body = signed.split(b"?>", 1)[1]
    xxe = b'<?xml version="1.0"?><!DOCTYPE gc:globalConf [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + body
    with pytest.raises(GlobalConfMalformed) as info:
        verify_and_parse(xxe, anchor=make_anchor(signer), now=NOW)
    assert info.value.message == "global configuration must not contain a document type declaration (DOCTYPE)"


def test_oversized_document_is_refused_before_parsing(signer: Signer) -> None:
    """Anything over 16 MiB is GlobalConfMalformed without being parsed."""
    with pytest.raises(GlobalConfMalformed) as info:
        verify_and_parse(b" " * (MAX_GLOBALCONF_BYTES + 1), anchor=make_anchor(signer), now=NOW)
    assert info.value.message == f"global configuration is larger than {MAX_GLOBALCONF_BYTES} bytes"


def test_garbage_is_malformed(signer: Signer) -> None:
    """Bytes that are not XML are GlobalConfMalformed, not an unexpected exception."""
    with pytest.raises(GlobalConfMalformed):
        verify_and_parse(b"\x00\xffnot xml", anchor=make_anchor(signer), now=NOW)


# Safe XML parsing ----------------------------------------------------------------------------------------------


class _Refused(KorpuError):
    code = "Refused"


def _parse(data: bytes, **kwargs: int) -> etree._Element:
    return parse_xml(data, max_bytes=kwargs.pop("max_bytes", 10_000), error=_Refused, what="doc", **kwargs)


def test_parse_xml_accepts_plain_documents_and_keeps_comments() -> None:
    """An ordinary document parses; comments are kept (signature canonicalisation may need them)."""
    root = _parse(b"<a><!-- c --><b>x</b></a>")
    assert [c.tag if isinstance(c.tag, str) else "comment" for c in root] == ["comment", "b"]


def test_parse_xml_refuses_xxe() -> None:
    """An external entity is refused (the error class is the caller's), and no file content is read."""
    xxe = b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    with pytest.raises(_Refused) as info:
        _parse(xxe)
    assert info.value.message == "doc must not contain a document type declaration (DOCTYPE)"


def test_parse_xml_refuses_billion_laughs() -> None:
    """Nested entity expansion is refused before anything expands."""
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
        )
        + b"]><lolz>&lol9;</lolz>"
    )
    with pytest.raises(_Refused):
        _parse(lol, max_bytes=100_000)


def test_parse_xml_refuses_external_dtd_reference() -> None:
    """A DOCTYPE with only an external identifier (no internal subset) is refused too."""
    with pytest.raises(_Refused, match="DOCTYPE"):
        _parse(b'<!DOCTYPE a SYSTEM "http://127.0.0.1:1/x.dtd"><a/>')


def test_parse_xml_refuses_deep_nesting() -> None:
    """A tree deeper than max_depth is refused; exactly max_depth is accepted."""
    assert _parse(b"<a>" * 5 + b"</a>" * 5, max_depth=5).tag == "a"
    with pytest.raises(_Refused) as info:
        _parse(b"<a>" * 6 + b"</a>" * 6, max_depth=5)
    assert info.value.message == "doc is nested deeper than 5 elements"


def test_parse_xml_refuses_oversized_input() -> None:
    """Input over max_bytes is refused by length alone."""
    with pytest.raises(_Refused) as info:
        _parse(b"<a/>" + b" " * 100, max_bytes=100)
    assert info.value.message == "doc is larger than 100 bytes"


def test_parse_xml_refuses_malformed_input() -> None:
    """Malformed XML raises the caller's error class, with libxml2's reason."""
    with pytest.raises(_Refused, match="not well-formed XML"):
        _parse(b"<a><b></a>")
