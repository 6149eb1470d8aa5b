"""Evidence containers from a real signed, OCSP-stapled, timestamped exchange.

Verified offline by Körpü and by xmlsec1 and openssl; any single changed byte in any file is caught and named.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.errors import LogVerificationFailed
from bridge.evidence import (
    CONTAINER_MIMETYPE,
    BatchRef,
    RecordEvidence,
    build_container,
    verify_container,
)
from bridge.identifiers import MemberId
from bridge.messagelog import LogRecord, merkle_proof
from catalog.tsa import TimestampAuthority
from security_server.messagelog import Batch
from tests.support.memlog import ExchangeBuilder, Logged, MemoryLogStore
from tests.support.pki import Pki, build_pki

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"

#: The layout of a container for a signed request and response with a body each (pinned on purpose).
EXPECTED_FILES = [
    "mimetype",
    "request/record.json",
    "request/signature.xml",
    "request/message",
    "request/body",
    "request/index",
    "request/ocsp-0.der",
    "request/ocsp-1.der",
    "request/proof.json",
    "request/timestamp.tsr",
    "response/record.json",
    "response/signature.xml",
    "response/message",
    "response/body",
    "response/index",
    "response/ocsp-0.der",
    "response/ocsp-1.der",
    "response/proof.json",
    "response/timestamp.tsr",
    "certs/ca-root.pem",
    "certs/ca-issuing.pem",
    "certs/tsa.pem",
    "certs/signer-request.pem",
    "certs/signer-response.pem",
    "README.txt",
    "META-INF/manifest.xml",
]


@dataclass
class World:
    pki: Pki
    store: MemoryLogStore
    builder: ExchangeBuilder
    logged: Logged
    batch: Batch
    container: bytes


def evidence(store: MemoryLogStore, record: LogRecord, batch: Batch) -> RecordEvidence:
    """What the archiver gathers for one record (done by hand here: bridge must not need the security server)."""
    hashes = [bytes.fromhex(r.hash) for r in store.records(batch.first_seq, batch.last_seq)]
    proof = merkle_proof(hashes, record.seq - batch.first_seq)
    parts = {p.name: store.body(p.sha512, record.seq) or b"" for p in record.parts if p.stored}
    ref = BatchRef(batch.id, batch.first_seq, batch.last_seq, batch.merkle_root.hex(), batch.stamped_at, batch.tsa_url)
    return RecordEvidence(record, parts, proof, ref, batch.token)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pki = build_pki(tmp_path_factory.mktemp("pki"))
    store = MemoryLogStore()
    builder = ExchangeBuilder(pki, store)
    builder.exchange()  # another exchange first: the proofs then have siblings on both sides
    logged = builder.exchange()
    builder.exchange()
    batch = builder.timestamp()
    assert logged.response is not None
    container = build_container(
        evidence(store, logged.request, batch), evidence(store, logged.response, batch), builder.certs
    )
    return World(pki, store, builder, logged, batch, container)


def rewrite(container: bytes, name: str, change: bytes | None) -> bytes:
    """The container with file ``name`` replaced by ``change`` (or dropped), everything else kept as it was."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(container)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename == name:
                if change is None:
                    continue
                dst.writestr(info, change)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def read(container: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(container)) as zf:
        return zf.read(name)


# Building and verifying ---------------------------------------------------------------------------------------------


def test_container_verifies_and_reports_who_signed_and_when(world: World) -> None:
    """A container built from a real exchange verifies offline; the report names records, signers and genTime."""
    report = verify_container(world.container)
    assert [(r.role, r.seq) for r in report.records] == [("request", 3), ("response", 4)]
    assert {r.signer for r in report.records} == {str(MemberId("AZ", "GOV", "1400057421"))}
    assert [r.batch_id for r in report.records] == [world.batch.id, world.batch.id]
    assert report.records[0].gen_time.isoformat().replace("+00:00", "Z") == world.batch.stamped_at
    assert report.request_id == world.logged.request.request_id
    assert "OK" in report.summary().splitlines()[0]


def test_container_layout_is_asic_e_and_reproducible(world: World) -> None:
    """The mimetype comes first and stored; the manifest lists every file with its media type; builds are repeatable."""
    with zipfile.ZipFile(io.BytesIO(world.container)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == EXPECTED_FILES
        assert (infos[0].compress_type, zf.read("mimetype")) == (zipfile.ZIP_STORED, CONTAINER_MIMETYPE.encode())
        manifest = zf.read("META-INF/manifest.xml").decode()
    listed = re.findall(r'full-path="([^"]+)" manifest:media-type="([^"]+)"', manifest)
    assert [p for p, _ in listed] == ["/", *EXPECTED_FILES[1:-1]]
    assert dict(listed)["request/body"] == "text/plain"
    assert dict(listed)["/"] == CONTAINER_MIMETYPE
    assert world.container == build_container(
        evidence(world.store, world.logged.request, world.batch),
        evidence(world.store, world.logged.response, world.batch),  # type: ignore[arg-type]
        world.builder.certs,
    )


def test_trust_roots_given_must_include_the_containers_root(world: World, tmp_path: Path) -> None:
    """With the auditor's own trust root the container verifies; with another federation's root it does not."""
    verify_container(world.container, trust_roots=[world.pki.ca.root_cert])
    other = build_pki(tmp_path / "other")
    with pytest.raises(LogVerificationFailed, match=r"container: check \(1\) layout failed: .*not a given trust root"):
        verify_container(world.container, trust_roots=[other.ca.root_cert])


# One changed byte, anywhere -------------------------------------------------------------------------------------------


def owner(name: str) -> str:
    """Which record a file's failure must name."""
    if name.startswith(("request/", "certs/signer-request")):
        return "request record"
    if name.startswith(("response/", "certs/signer-response")):
        return "response record"
    return ""


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_one_flipped_byte_in_any_file_fails_naming_record_and_check(world: World, name: str, where: str) -> None:
    """One flipped bit in the first, middle or last byte of any file fails verification, naming check and record."""
    data = read(world.container, name)
    position = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    tampered = rewrite(world.container, name, flip(data, position))
    with pytest.raises(LogVerificationFailed) as failure:
        verify_container(tampered)
    message = failure.value.message
    assert re.search(r"check \([1-7]\) [a-z ]+ failed", message), message
    assert owner(name) in message, message


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("request/record.json", "(2) record hash"),
        ("request/body", "(3) part digests"),
        ("response/signature.xml", "(4) signature"),
        ("request/ocsp-0.der", "(4) signature"),
        ("response/timestamp.tsr", "(6) timestamp"),
    ],
)
def test_changed_value_is_caught_by_its_own_check(world: World, name: str, step: str) -> None:
    """A well-formed change (a value, not the syntax) is caught by the check that covers it."""
    data = read(world.container, name)
    if name.endswith("record.json"):
        changed = data.replace(b'"user_id": "AZE1234567"', b'"user_id": "AZE7654321"')
    elif name.endswith("body"):
        changed = data.replace(b"2029", b"2028")
    elif name.endswith(".xml"):
        value = re.search(rb"<ds:SignatureValue>(.)", data)
        assert value is not None
        i = value.start(1)
        changed = data[:i] + (b"B" if data[i : i + 1] != b"B" else b"C") + data[i + 1 :]
    else:
        changed = flip(data, len(data) - 3)
    assert changed != data
    with pytest.raises(LogVerificationFailed, match=re.escape(step)):
        verify_container(rewrite(world.container, name, changed))


def test_missing_and_extra_files_fail(world: World) -> None:
    """A removed part file or an added file is a layout failure."""
    with pytest.raises(LogVerificationFailed, match=r"check \(1\) layout"):
        verify_container(rewrite(world.container, "request/body", None))
    out = io.BytesIO(world.container)
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr("request/extra", b"x")
    with pytest.raises(LogVerificationFailed, match=r"check \(1\) layout"):
        verify_container(out.getvalue())
    with pytest.raises(LogVerificationFailed, match=r"not a ZIP"):
        verify_container(b"PK not really")


def test_response_of_another_exchange_does_not_bind(world: World) -> None:
    """A genuine response record from another exchange, put next to this request, fails check (7)."""
    response = world.store.records(6, 6)[0]  # the third exchange's response
    assert (response.direction, response.request_id) == ("response", "req-0003")
    data = build_container(
        evidence(world.store, world.logged.request, world.batch),
        evidence(world.store, response, world.batch),
        world.builder.certs,
    )
    with pytest.raises(LogVerificationFailed, match=r"response record 6 \(with request record 3\): check \(7\)"):
        verify_container(data)


def test_signature_by_another_member_fails(tmp_path: Path) -> None:
    """A valid signing certificate of a member other than the client's fails check (4)."""
    pki = build_pki(tmp_path / "pki")
    store = MemoryLogStore()
    builder = ExchangeBuilder(pki, store)
    builder.other_member_signer(MemberId("AZ", "COM", "9900001111"))
    logged = builder.exchange(response=False)
    batch = builder.timestamp()
    data = build_container(evidence(store, logged.request, batch), None, builder.certs)
    with pytest.raises(LogVerificationFailed, match=r"request record 1: check \(4\) signature failed: signed by"):
        verify_container(data)


def test_revoked_signing_certificate_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stapled OCSP response saying 'revoked' fails check (4)."""
    pki = build_pki(tmp_path / "pki")
    store = MemoryLogStore()
    builder = ExchangeBuilder(pki, store)
    good = builder.ocsp
    monkeypatch.setattr(builder, "ocsp", lambda cert, revoked=False: good(cert, revoked=True))
    logged = builder.exchange(response=False)
    batch = builder.timestamp()
    data = build_container(evidence(store, logged.request, batch), None, builder.certs)
    with pytest.raises(LogVerificationFailed, match=r"check \(4\) signature failed: .*OCSP status was revoked"):
        verify_container(data)


def test_request_without_response_verifies_with_a_note(tmp_path: Path) -> None:
    """An exchange whose response is not logged (yet) exports as the request alone, and says so."""
    pki = build_pki(tmp_path / "pki")
    store = MemoryLogStore()
    builder = ExchangeBuilder(pki, store)
    logged = builder.exchange(response=False)
    batch = builder.timestamp()
    report = verify_container(build_container(evidence(store, logged.request, batch), None, builder.certs))
    assert [r.role for r in report.records] == ["request"]
    assert any("no response record" in n for n in report.notes)


# Independent verification with standard tools ------------------------------------------------------------------------


def readme_commands(container: bytes, *, raw: bool = False) -> list[str]:
    """The command lines README.txt gives (each indented by two spaces, starting with a tool or a subshell)."""
    text = (container if raw else read(container, "README.txt")).decode()
    return [line[2:] for line in text.splitlines() if re.match(r"  (\(cd |openssl |python3 check\.py)", line)]


def unzip(container: bytes, directory: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(container)) as zf:
        zf.extractall(directory)
    text = (directory / "README.txt").read_text()
    script = text.split("standard library only):\n\n", 1)[1]
    (directory / "check.py").write_text("\n".join(line[4:] for line in script.splitlines()) + "\n")
    return directory


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def unpacked(world: World, tmp_path: Path) -> Path:
    if shutil.which("xmlsec1") is None or shutil.which("openssl") is None:
        pytest.skip("xmlsec1 and openssl are needed (make system-deps)")
    return unzip(world.container, tmp_path / "evidence")


def generic(command: str) -> str:
    """A README command with its record-specific values replaced by the placeholders docs/audit.md uses."""
    out = re.sub(r"\b(request|response)\b", "<role>", command)
    epoch = "<genTime epoch>" if command.startswith("openssl ts") else "<signing epoch>"
    out = re.sub(r"-attime \d+", f"-attime {epoch}", out)
    out = re.sub(r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d'", "'<signing time UTC>'", out)
    return re.sub(r"-digest [0-9a-f]{64}", "-digest <merkle root hex>", out)


def test_readme_commands_are_the_documented_ones(world: World) -> None:
    """Every README command is one docs/audit.md documents, with the placeholders filled in."""
    doc = DOCS.read_text(encoding="utf-8")
    templates = re.findall(r"^  ((?:\(cd <role>|openssl ).*)$", doc, flags=re.MULTILINE)
    assert len(templates) == 4, templates
    commands = [c for c in readme_commands(world.container) if not c.startswith("python3")]
    assert len(commands) == 8
    assert {generic(c) for c in commands} == set(templates)


def test_standard_tools_verify_the_container(world: World, unpacked: Path) -> None:
    """xmlsec1, openssl verify / ocsp / ts and the stdlib-only Python check all accept the evidence."""
    commands = readme_commands(world.container)
    assert len(commands) == 10
    for command in commands:
        result = run(command, unpacked)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        if "xmlsec1" in command:
            assert "SignedInfo References (ok/all): 4/4" in output
        elif "openssl ts" in command:
            assert "Verification: OK" in output
        elif "openssl ocsp" in command:
            assert "Response verify OK" in output
            assert ": good" in output
        elif "openssl verify" in command:
            assert output.strip().endswith(": OK")
        else:
            assert "Merkle proof OK" in output


@pytest.mark.parametrize(
    ("name", "tool"),
    [
        ("request/body", "xmlsec1"),
        ("request/index", "xmlsec1"),
        ("request/timestamp.tsr", "openssl ts"),
        ("certs/signer-request.pem", "openssl verify"),
        ("request/ocsp-0.der", "openssl ocsp"),
        ("request/record.json", "python3 check.py"),
    ],
)
def test_standard_tools_fail_on_a_flipped_byte(unpacked: Path, name: str, tool: str) -> None:
    """The same commands fail once one byte of the file they check is changed."""
    path = unpacked / name
    data = path.read_bytes()
    middle = len(data) // 2
    if name.endswith(".tsr"):  # the signature value; openssl ignores changes to certificates it does not need
        middle = len(data) - 1
    if name.endswith(".pem"):  # flip inside the base64 body, keeping it base64
        middle = data.index(b"\n", 40) + 20
        changed = data[:middle] + (b"A" if data[middle : middle + 1] != b"A" else b"B") + data[middle + 1 :]
    else:
        changed = flip(data, middle)
    path.write_bytes(changed)
    command = next(
        c for c in readme_commands((unpacked / "README.txt").read_bytes(), raw=True) if tool in c and "request" in c
    )
    result = run(command, unpacked)
    output = result.stdout + result.stderr
    assert result.returncode != 0 or ": good" not in output, (command, output)
    if tool != "openssl ocsp":
        assert result.returncode != 0, (command, output)


def test_documented_python_check_matches_the_readme() -> None:
    """The stdlib-only check printed in docs/audit.md is the one README.txt carries."""
    from bridge.evidence import PYTHON_CHECK

    doc = DOCS.read_text(encoding="utf-8")
    assert PYTHON_CHECK in doc


def test_records_timestamped_long_after_their_time_are_refused(tmp_path: Path) -> None:
    """A record (and signature) claiming a time more than a day before its batch's timestamp fails check (8).

    This is what stops a signature backdated to before its key's revocation, with an old "good" OCSP response,
    from verifying: the independent timestamp says when the record really existed.
    """
    pki = build_pki(tmp_path / "pki")
    store = MemoryLogStore()
    builder = ExchangeBuilder(pki, store)
    logged = builder.exchange()
    assert logged.response is not None
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    builder.tsa = TimestampAuthority(pki.tsa_cert, pki.tsa_key, pki.ca.chain, clock=lambda: late)
    batch = builder.timestamp()
    container = build_container(
        evidence(store, logged.request, batch), evidence(store, logged.response, batch), builder.certs
    )
    with pytest.raises(LogVerificationFailed, match=r"check \(8\).*before the batch's timestamp"):
        verify_container(container)
