"""A security server's registration with the central server, from submission to installed certificates.

``korpu ss init`` submits one registration request carrying the server's identity, address, client subsystems
and two CSRs (authentication key, owner's signing key).  The central server's registration officer approves it,
its CA issues the certificates, and this module fetches them and installs them in the token — checking first that
each certificate carries the public key of the token's own key and the expected identity, so a wrong or forged
answer cannot be installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from bridge.errors import CertificateInvalid, InvalidRequest, KorpuError, UpstreamUnavailable
from bridge.fsutil import write_atomic
from bridge.globalconf import GlobalConf
from bridge.identifiers import SecurityServerId
from bridge.logsetup import get_logger
from bridge.pki.profile import (
    CertPurpose,
    check_auth_cert,
    check_sign_cert,
    member_from_sign_cert,
    server_from_auth_cert,
    verify_chain,
)
from bridge.pki.token import SoftwareToken

__all__ = [
    "REGISTRATION_FILE",
    "RegistrationState",
    "RemoteError",
    "fetch_request",
    "follow_registration",
    "install_certificates",
    "submit_request",
]

log = get_logger(__name__)

REGISTRATION_FILE = "registration.json"
_TIMEOUT = aiohttp.ClientTimeout(total=15)
_MAX_RESPONSE = 1024 * 1024


@dataclass
class RegistrationState:
    """What this server knows about its registration request (``registration.json``)."""

    request_id: str
    central_url: str
    server_id: str
    state: str = "submitted"
    certificates_installed: bool = False
    updated_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    @property
    def complete(self) -> bool:
        """Whether nothing is left to follow up (approved and installed, or rejected)."""
        return self.certificates_installed or self.state == "rejected"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "request_id": self.request_id,
            "central_url": self.central_url,
            "server_id": self.server_id,
            "state": self.state,
            "certificates_installed": self.certificates_installed,
            "updated_at": self.updated_at,
        }

    def save(self, state_dir: Path) -> None:
        """Write atomically to the state directory."""
        self.updated_at = dt.datetime.now(dt.UTC).isoformat()
        write_atomic(state_dir / REGISTRATION_FILE, json.dumps(self.to_dict(), indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> RegistrationState:
        """Read from the state directory."""
        data = json.loads((state_dir / REGISTRATION_FILE).read_text(encoding="utf-8"))
        return cls(**data)


async def _call(method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.request(method, url, json=payload) as resp,
        ):
            body = await resp.content.read(_MAX_RESPONSE + 1)
            if len(body) > _MAX_RESPONSE:
                raise UpstreamUnavailable(f"{url}: response larger than {_MAX_RESPONSE} bytes")
            try:
                data = json.loads(body)
            except ValueError:
                raise UpstreamUnavailable(f"{url}: answered HTTP {resp.status} with a non-JSON body") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"cannot reach the central server at {url}: {exc.__class__.__name__}") from None
    except TimeoutError:
        raise UpstreamUnavailable(f"the central server at {url} did not answer in time") from None
    if not isinstance(data, dict):
        raise UpstreamUnavailable(f"{url}: unexpected answer")
    if resp.status >= 400:
        raise RemoteError.from_answer(data, resp.status)
    return data


class RemoteError(KorpuError):
    """A fault reported by the central server, relayed with its own code and message (meant for the operator)."""

    code = "RemoteError"

    def __init__(self, message: str, *, remote_type: str, remote_status: int) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_status = remote_status

    @classmethod
    def from_answer(cls, data: object, status: int) -> RemoteError:
        """Build from the central server's JSON error body."""
        body = data if isinstance(data, dict) else {}
        return cls(
            str(body.get("message", f"HTTP {status}")),
            remote_type=str(body.get("type", "Server.InternalError")),
            remote_status=status,
        )

    @property
    def fault_code(self) -> str:
        """The central server's fault code."""
        return self.remote_type


async def submit_request(central_url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Submit a registration request; returns the central server's view of it (``id``, ``state``, …)."""
    return await _call("POST", f"{central_url.rstrip('/')}/api/v1/registration-requests", payload)


async def fetch_request(central_url: str, request_id: str) -> dict[str, Any]:
    """Read the current state of a registration request (no API key needed: it carries only public data)."""
    return await _call("GET", f"{central_url.rstrip('/')}/api/v1/registration-requests/{request_id}")


def _same_key(cert: x509.Certificate, token: SoftwareToken, label: str) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == token.public_key(label).public_bytes(enc, fmt)


def install_certificates(
    token: SoftwareToken, server_id: SecurityServerId, answer: dict[str, Any], conf: GlobalConf
) -> None:
    """Check and install the certificates of an approved request into the token.

    The answer comes over a channel that need not be authenticated, so nothing in it is trusted: (1) both
    certificates must be present and parse; (2) each must carry the public key of our own key in the token;
    (3) each must fit the certificate profile and name this server / its owner; (4) each must chain to a CA
    that the verified global configuration ``conf`` approves.  Only then are both stored; a failure stores
    neither.
    """
    # (1) parse
    try:
        auth = x509.load_pem_x509_certificate(str(answer["auth_certificate"]).encode())
        sign = x509.load_pem_x509_certificate(str(answer["sign_certificate"]).encode())
    except (KeyError, ValueError):
        raise InvalidRequest("the central server's answer lacks valid certificates") from None
    # (2) our keys.  cryptography parses a certificate's key only here: an unknown key algorithm or a bad point
    #     raises UnsupportedAlgorithm or ValueError, which must fail this answer, not the follow-up task.
    try:
        ours = _same_key(auth, token, "auth") and _same_key(sign, token, "sign")
    except (ValueError, UnsupportedAlgorithm):
        ours = False
    if not ours:
        raise CertificateInvalid("an issued certificate does not carry this server's public key")
    # (3) profile and identity
    check_auth_cert(auth)
    check_sign_cert(sign)
    if server_from_auth_cert(auth) != server_id or member_from_sign_cert(sign) != server_id.owner:
        raise CertificateInvalid("an issued certificate names another server or member")
    # (4) issued by an approved CA
    now = dt.datetime.now(dt.UTC)
    for cert, purpose in ((auth, CertPurpose.AUTH), (sign, CertPurpose.SIGN)):
        _verify_with_approved_cas(cert, conf, now, purpose)
    token.store_certificate("auth", auth)
    token.store_certificate("sign", sign)


def _verify_with_approved_cas(cert: x509.Certificate, conf: GlobalConf, now: dt.datetime, purpose: CertPurpose) -> None:
    problems = []
    for ca in conf.cas:
        roots = [x509.load_der_x509_certificate(ca.top_cert)]
        intermediates = [x509.load_der_x509_certificate(der) for der in ca.intermediate_certs]
        try:
            verify_chain(cert, intermediates, roots, now, purpose)
            return
        except CertificateInvalid as exc:
            problems.append(exc.message)
    raise CertificateInvalid(
        "an issued certificate does not chain to a CA approved in global configuration"
        + (f" ({'; '.join(problems)})" if problems else "")
    )


async def poll_once(state_dir: Path, token: SoftwareToken | None, reg: RegistrationState, conf: GlobalConf) -> bool:
    """Ask the central server once; install certificates when approved (if the token is open).

    Returns whether follow-up is done.
    """
    answer = await fetch_request(reg.central_url, reg.request_id)
    reg.state = str(answer.get("state", reg.state))
    if reg.state == "approved" and not reg.certificates_installed and token is not None:
        server_id = SecurityServerId.parse(reg.server_id)
        await asyncio.to_thread(install_certificates, token, server_id, answer, conf)
        reg.certificates_installed = True
        log.info("certificates installed", request_id=reg.request_id)
    await asyncio.to_thread(reg.save, state_dir)
    return reg.complete


async def follow_registration(
    state_dir: Path, token: SoftwareToken, reg: RegistrationState, confclient: Any, interval_s: float = 5.0
) -> None:
    """Poll until the request is decided; after installing certificates, refresh global configuration."""
    while True:
        try:
            if await poll_once(state_dir, token, reg, confclient.current()):
                if reg.certificates_installed:
                    await confclient.refresh()
                return
        except KorpuError as exc:
            log.warning("registration follow-up failed", fault=exc.fault_code, error=exc.message)
        except Exception as exc:
            # A bug or an answer nothing above foresaw: keep following (the request is still pending) and say so.
            log.error("registration follow-up failed unexpectedly", error=type(exc).__name__)
        await asyncio.sleep(interval_s)
