"""An in-memory message log store and a builder of real, signed, timestamped exchanges, for evidence tests.

:class:`MemoryLogStore` implements :class:`security_server.messagelog.LogStore` (plus ``delete_through``, which
the archiver needs to prune) over dicts.  :class:`ExchangeBuilder` signs request and response parts with a member
signing key from :mod:`tests.support.pki`, staples OCSP responses from :func:`catalog.ocsp.build_ocsp_response`,
logs the records the way the proxies do (the derived ``index`` part stored like any other part), and timestamps
batches with :class:`catalog.tsa.TimestampAuthority` — all in process, without a network.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.errors import LoggingFailed
from bridge.evidence import EvidenceCerts, index_log_part, index_part
from bridge.identifiers import MemberId
from bridge.messagelog import GENESIS_HASH, LogPart, LogRecord, merkle_root, utc_now_text
from bridge.pki.keys import PrivateKey
from bridge.pki.ocsp import make_ocsp_request
from bridge.pki.tsp import make_timestamp_request, parse_timestamp_response, verify_timestamp_token
from bridge.signature import MessageSigner, Part
from bridge.spool import Spool
from bridge.transport import PartInfo
from catalog.certregistry import CertKind, CertRecord
from catalog.ocsp import build_ocsp_response
from catalog.tsa import TimestampAuthority
from security_server.messagelog import Batch, LogQuery, LogStore
from tests.support.pki import Pki, csr_for

SERVER = "AZ/GOV/1400057421/ss1"
CLIENT = "SUBSYSTEM:AZ/GOV/1400057421/tax"
SERVICE = "SERVICE:AZ/GOV/1400057421/population/hello"
TSA_URL = "http://127.0.0.1/tsa"


class MemoryLogStore:
    """:class:`~security_server.messagelog.LogStore` in memory, strict about the contract's invariants."""

    def __init__(self) -> None:
        self._records: dict[int, LogRecord] = {}
        self._bodies: dict[str, bytes] = {}
        self._batches: list[Batch] = []
        self._head: tuple[int, bytes] = (0, GENESIS_HASH)
        self.closed = False

    def head(self) -> tuple[int, bytes]:
        """``(last seq, last hash)``."""
        return self._head

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        """Store sealed, consecutive records after the head, and their bodies."""
        seq, prev = self._head
        for record in records:
            if record.seq != seq + 1 or record.prev_hash != prev.hex():
                raise LoggingFailed("records must continue the chain")
            seq, prev = record.seq, bytes.fromhex(record.hash)
        for digest, spool in bodies.items():
            self._bodies[digest] = spool.getvalue()
        for record in records:
            self._records[record.seq] = record
        self._head = (seq, prev)

    def records(self, first_seq: int, last_seq: int) -> list[LogRecord]:
        """Records ``first_seq..last_seq`` that are present, in order."""
        return [self._records[s] for s in range(first_seq, last_seq + 1) if s in self._records]

    def find(self, query: LogQuery) -> list[LogRecord]:
        """Records matching ``query``."""
        out = []
        for seq in sorted(self._records):
            r = self._records[seq]
            if seq <= query.after_seq:
                continue
            checks = [
                (query.message_id, r.message_id),
                (query.request_id, r.request_id),
                (query.client, r.client),
                (query.service, r.service),
            ]
            if any(want is not None and want != have for want, have in checks):
                continue
            if query.person is not None and query.person != r.user_id and query.person not in r.persons:
                continue
            if query.since is not None and r.at < query.since:
                continue
            if query.until is not None and r.at >= query.until:
                continue
            out.append(r)
            if len(out) >= query.limit:
                break
        return out

    def body(self, sha512_hex: str, seq: int) -> bytes | None:
        """A stored body (kept once per digest here, whichever record names it)."""
        return self._bodies.get(sha512_hex)

    def unstamped(self, limit: int) -> list[tuple[int, bytes, str]]:
        """Records after the last batch."""
        after = self._batches[-1].last_seq if self._batches else 0
        seqs = sorted(s for s in self._records if s > after)[:limit]
        return [(s, bytes.fromhex(self._records[s].hash), self._records[s].at) for s in seqs]

    def add_batch(
        self, first_seq: int, last_seq: int, merkle_root: bytes, token: bytes, tsa_url: str, stamped_at: str
    ) -> Batch:
        """Record a batch right after the previous one."""
        after = self._batches[-1].last_seq if self._batches else 0
        if first_seq != after + 1 or last_seq < first_seq or last_seq > self._head[0]:
            raise LoggingFailed("a batch must start right after the previous one")
        batch = Batch(len(self._batches) + 1, first_seq, last_seq, merkle_root, token, tsa_url, stamped_at)
        self._batches.append(batch)
        return batch

    def batch_of(self, seq: int) -> Batch | None:
        """The batch holding ``seq``, if the record is present and timestamped."""
        if seq not in self._records:
            return None
        return next((b for b in self._batches if b.first_seq <= seq <= b.last_seq), None)

    def delete_through(self, last_seq: int) -> None:
        """Drop records up to ``last_seq`` (whole batches), their batches, and bodies no remaining record uses."""
        if not any(b.last_seq == last_seq for b in self._batches):
            raise LoggingFailed("delete_through must end at a batch boundary")
        for seq in [s for s in self._records if s <= last_seq]:
            del self._records[seq]
        self._batches = [b for b in self._batches if b.first_seq > last_seq]
        used = {p.sha512 for r in self._records.values() for p in r.parts}
        self._bodies = {k: v for k, v in self._bodies.items() if k in used}

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


@dataclass
class Logged:
    """One exchange as logged: the sealed request and response records."""

    request: LogRecord
    response: LogRecord | None


@dataclass
class ExchangeBuilder:
    """Makes real signed exchanges and logs them into ``store``, as a security server's proxies would."""

    pki: Pki
    store: LogStore
    sign_key: PrivateKey | None = None
    sign_cert: x509.Certificate | None = None
    counter: int = 0
    tsa: TimestampAuthority = field(init=False)

    def __post_init__(self) -> None:
        self.tsa = TimestampAuthority(self.pki.tsa_cert, self.pki.tsa_key, self.pki.ca.chain)

    @property
    def certs(self) -> EvidenceCerts:
        """The federation certificates for an evidence container."""
        return EvidenceCerts((self.pki.ca.root_cert,), (self.pki.ca.issuing_cert,), (self.pki.tsa_cert,))

    def signer(self) -> MessageSigner:
        """A signer for the member's key (or the override), with the issuing CA in KeyInfo."""
        key = self.sign_key or self.pki.sign_key
        cert = self.sign_cert or self.pki.sign_cert
        return MessageSigner(key, cert, [self.pki.ca.issuing_cert])

    def ocsp(self, cert: x509.Certificate, *, revoked: bool = False) -> bytes:
        """A GOOD (or revoked) OCSP response about ``cert`` from the federation's delegated responder."""
        now = dt.datetime.now(dt.UTC)
        record = CertRecord(
            cert.serial_number,
            CertKind.SIGN,
            cert.subject.rfc4514_string(),
            cert.public_bytes(Encoding.DER),
            cert.not_valid_after_utc,
            revoked_at=now - dt.timedelta(minutes=1) if revoked else None,
            revocation_reason="keyCompromise" if revoked else None,
        )
        return build_ocsp_response(
            make_ocsp_request(cert, self.pki.ca.issuing_cert, nonce=False),
            issuer_cert=self.pki.ca.issuing_cert,
            responder_cert=self.pki.ocsp_cert,
            responder_key=self.pki.ocsp_key,
            lookup_result=record,
            now=now,
        )

    def _message(
        self, parts: Sequence[tuple[str, str, bytes]], meta: Mapping[str, str]
    ) -> tuple[tuple[LogPart, ...], dict[str, Spool], str]:
        infos = tuple(PartInfo(name, ctype, len(data)) for name, ctype, data in parts)
        index = index_part(infos, meta)
        log_parts = [LogPart(n, c, len(d), hashlib.sha512(d).hexdigest()) for n, c, d in parts]
        log_parts.append(index_log_part(index))
        bodies = {p.sha512: Spool.from_bytes(d) for p, (_, _, d) in zip(log_parts, parts, strict=False)}
        bodies[log_parts[-1].sha512] = Spool.from_bytes(index)
        signed = [Part(p.name, bytes.fromhex(p.sha512)) for p in log_parts]
        signature = self.signer().sign(signed, signing_time=dt.datetime.now(dt.UTC))
        return tuple(log_parts), bodies, base64.b64encode(signature).decode("ascii")

    def _append(self, record: LogRecord, bodies: Mapping[str, Spool]) -> LogRecord:
        seq, prev = self.store.head()
        sealed = record.sealed(seq + 1, prev)
        self.store.append([sealed], bodies)
        return sealed

    def exchange(self, *, response: bool = True, body: bytes = b"AZE1234567 income 2029") -> Logged:
        """Log a signed REST request (descriptor + body) and, unless told otherwise, its signed response."""
        self.counter += 1
        rid, mid = f"req-{self.counter:04d}", f"msg-{self.counter:04d}"
        descriptor = json.dumps({"format": "korpu-rest-request/1", "id": mid}, sort_keys=True).encode()
        d = hashlib.sha512(descriptor).digest()
        request_hash = base64.b64encode(hashlib.sha512(d + hashlib.sha512(body).digest()).digest()).decode()
        meta = {"protocol": "REST", "id": mid, "requestId": rid, "requestHash": request_hash}
        cert = self.sign_cert or self.pki.sign_cert
        staples = (
            base64.b64encode(self.ocsp(cert)).decode(),
            base64.b64encode(self.ocsp(self.pki.auth_cert)).decode(),
        )
        parts, bodies, signature = self._message(
            [("message", "application/json", descriptor), ("body", "text/plain", body)], meta
        )
        base = LogRecord(
            at=utc_now_text(),
            server=SERVER,
            side="consumer",
            direction="request",
            request_id=rid,
            message_id=mid,
            protocol="REST",
            client=CLIENT,
            service=SERVICE,
            user_id="AZE1234567",
            peer="AZ/GOV/1400057421/ss2",
            request_hash=request_hash,
            parts=parts,
            signature=signature,
            ocsp=staples,
            persons=("AZE1234567",),
            timings_ms={"request_in": 0.5},
        )
        request = self._append(base, bodies)
        if not response:
            return Logged(request, None)
        answer = json.dumps({"format": "korpu-rest-response/1", "status": 200}, sort_keys=True).encode()
        parts, bodies, signature = self._message(
            [("message", "application/json", answer), ("body", "application/json", b'{"income": 1200}')],
            {"protocol": "REST", "requestHash": request_hash},
        )
        resp = dataclasses.replace(
            base, at=utc_now_text(), direction="response", parts=parts, signature=signature, timings_ms={}
        )
        return Logged(request, self._append(resp, bodies))

    def timestamp(self) -> Batch:
        """Timestamp every unstamped record as one batch."""
        pending = self.store.unstamped(10_000)
        root = merkle_root([h for _, h, _ in pending])
        token = parse_timestamp_response(self.tsa.respond(make_timestamp_request(root)))
        gen_time = verify_timestamp_token(token, data_digest=root, tsa_cert=self.pki.tsa_cert)
        stamped_at = gen_time.isoformat().replace("+00:00", "Z")
        return self.store.add_batch(pending[0][0], pending[-1][0], root, token, TSA_URL, stamped_at)

    def other_member_signer(self, member: MemberId) -> None:
        """Sign from now on with a valid signing certificate of another member (for 'wrong signer' tests)."""
        from bridge.pki.keys import generate_private_key

        key = generate_private_key()
        self.sign_key = key
        self.sign_cert = self.pki.ca.issue_sign_cert(csr_for(key), member, "Another Member")
