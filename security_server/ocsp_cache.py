"""OCSP responses for this security server's own certificates, fetched ahead of time and sent along with messages.

The receiver checks our certificates against the response we staple (:class:`security_server.certcheck.
CertificateChecker`), so neither side calls an OCSP responder per message.  This module keeps those responses:

* :meth:`OwnOcspResponses.refresh` asks the OCSP URL of the approved CA that issued each certificate (from global
  configuration), verifies the answer (authorised responder, about this certificate, nonce echoed, fresh) and
  caches it only if it says GOOD.  A verified REVOKED or UNKNOWN answer drops the cached copy at once: our own
  certificate must stop being used as soon as its CA says so, even if an older GOOD response is still fresh.
* A response is refreshed once ``refresh_fraction`` of its usable life (thisUpdate to the earlier of nextUpdate and
  thisUpdate + ``ocsp_freshness_s``) has passed, so a responder outage shorter than the rest of that life goes
  unnoticed by peers.  On failure the last good copy stays until it is no longer fresh.
* :meth:`OwnOcspResponses.response_for` is the message path: a dict lookup and a time comparison.  With no fresh
  copy it raises, so the proxy fails closed instead of sending a response the receiver would refuse.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.aio import running_task
from bridge.errors import CertificateInvalid, CertificateRevoked, KorpuError, UpstreamUnavailable
from bridge.globalconf import ApprovedCA, GlobalConf
from bridge.pki.ocsp import RevocationStatus, make_ocsp_request, request_nonce, verify_ocsp_response

__all__ = ["MAX_RESPONSE_BYTES", "OwnOcspResponses"]

log = structlog.get_logger(__name__)

#: Largest OCSP response read; a single-certificate response with the responder's certificate is about 1.5 KB.
MAX_RESPONSE_BYTES = 64 * 1024
_CONTENT_TYPE_REQUEST = "application/ocsp-request"


@dataclass(frozen=True, slots=True)
class _Cached:
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime | None
    fetched_at: dt.datetime
    refresh_at: dt.datetime
    stale_at: dt.datetime
    url: str


@dataclass
class _State:
    cert: x509.Certificate
    issuer: x509.Certificate
    cached: _Cached | None = None
    last_success: dt.datetime | None = None
    last_error: KorpuError | None = None
    last_error_at: dt.datetime | None = None
    revoked: bool = False


class OwnOcspResponses:
    """Fresh, verified OCSP responses for this server's certificates, by label (``"auth"``, ``"sign"``, …).

    ``certs`` maps each label to ``(certificate, issuing CA certificate)``.  ``timeout_s`` bounds each request;
    ``refresh_fraction`` is how far into a response's usable life it is renewed; ``retry_interval_s`` how soon
    :meth:`run` tries again after a failure.  ``clock`` is for tests.
    """

    def __init__(
        self,
        conf_provider: Callable[[], GlobalConf],
        certs: Mapping[str, tuple[x509.Certificate, x509.Certificate]],
        *,
        timeout_s: float = 10,
        refresh_fraction: float = 0.5,
        retry_interval_s: float = 30,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if not 0 < refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        if timeout_s <= 0 or retry_interval_s <= 0:
            raise ValueError("timeout_s and retry_interval_s must be positive")
        self._conf_provider = conf_provider
        self._states = {label: _State(cert, issuer) for label, (cert, issuer) in certs.items()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._fraction = refresh_fraction
        self._retry = dt.timedelta(seconds=retry_interval_s)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._lock = asyncio.Lock()

    # The hot path ------------------------------------------------------------------------------------------------

    def response_for(self, label: str, now: dt.datetime | None = None) -> bytes:
        """The DER OCSP response to send with certificate ``label``; O(1), no I/O.

        Raises :class:`CertificateInvalid` if there is no response or the last good one is no longer fresh.
        """
        state = self._states.get(label)
        if state is None:
            raise CertificateInvalid(f"no certificate labelled {label!r} is tracked for OCSP")
        cached = state.cached  # read once: refresh() may swap it concurrently
        if state.revoked:
            raise CertificateRevoked(f"the CA reports our {label!r} certificate as revoked")
        if cached is None:
            raise CertificateInvalid(f"no good OCSP response for our {label!r} certificate has been obtained")
        if (now or self._clock()) >= cached.stale_at:
            raise CertificateInvalid(f"the OCSP response for our {label!r} certificate is no longer fresh")
        return cached.der

    # Refreshing --------------------------------------------------------------------------------------------------

    async def refresh(self, now: dt.datetime | None = None, *, force: bool = False) -> list[str]:
        """Fetch responses for every certificate that has none or is due (all of them if ``force``).

        Returns the labels that now hold a newly fetched response.  Failures are recorded for :meth:`status` and
        logged, not raised, so one unreachable CA does not stop the others; a certificate whose CA says it is
        revoked or unknown loses its cached response.
        """
        async with self._lock:
            now = now or self._clock()
            refreshed = []
            conf: GlobalConf | None = None
            for label, state in self._states.items():
                cached = state.cached
                if not force and cached is not None and now < cached.refresh_at:
                    continue
                try:
                    conf = conf or self._conf_provider()
                    state.cached = await self._fetch(conf, state, now)
                except KorpuError as exc:
                    self._record_error(label, state, exc, now)
                except Exception as exc:
                    # Fail closed for anything unexpected too: keep what we had (it still expires on time).
                    self._record_error(
                        label, state, UpstreamUnavailable(f"OCSP refresh failed: {type(exc).__name__}"), now
                    )
                else:
                    state.last_success, state.last_error, state.last_error_at = now, None, None
                    refreshed.append(label)
            return refreshed

    async def _fetch(self, conf: GlobalConf, state: _State, now: dt.datetime) -> _Cached:
        # (1) The approved CA that issued the certificate, which names the OCSP URLs and delegated responders.
        ca = _issuing_ca(conf, state.issuer)
        if not ca.ocsp_urls:
            raise UpstreamUnavailable(f"approved CA {ca.name!r} lists no OCSP URL")
        try:
            responders = [x509.load_der_x509_certificate(d) for d in ca.ocsp_responder_certs]
        except ValueError:
            raise CertificateInvalid(
                f"approved CA {ca.name!r} has an OCSP responder cert that does not parse"
            ) from None
        max_age = dt.timedelta(seconds=conf.params.ocsp_freshness_s)
        error: KorpuError = UpstreamUnavailable("no OCSP URL answered")
        for url in ca.ocsp_urls:
            # (2) A fresh request with a nonce, so a replayed old response cannot pass step (4).
            request = make_ocsp_request(state.cert, state.issuer, nonce=True)
            try:
                der = await self._post(url, request)
            except UpstreamUnavailable as exc:
                error = exc
                continue
            # (3) Verify signature, responder authorisation, CertID, freshness and the nonce.  An unverifiable
            #     answer from one URL is treated like an unreachable one: try the next.
            try:
                status = verify_ocsp_response(
                    der,
                    state.cert,
                    state.issuer,
                    trusted_responder_certs=responders,
                    now=now,
                    max_age=max_age,
                    nonce=request_nonce(request),
                )
            except CertificateInvalid as exc:
                error = exc
                continue
            # (4) Only GOOD is cached.  A verified REVOKED/UNKNOWN is the CA's word: drop the old copy now.
            if status.status is not RevocationStatus.GOOD:
                state.cached = None
                if status.status is RevocationStatus.REVOKED:
                    state.revoked = True  # final: a revoked certificate never becomes good again
                    raise CertificateRevoked(
                        f"the CA's OCSP responder reports our certificate {state.cert.serial_number:x} as revoked"
                    )
                raise CertificateInvalid(f"the CA's OCSP responder reports our certificate as {status.status}")
            # (5) When the response stops being usable, and when to renew it.
            stale_at = status.this_update + max_age
            if status.next_update is not None:
                stale_at = min(stale_at, status.next_update)
            refresh_at = status.this_update + (stale_at - status.this_update) * self._fraction
            log.info("ocsp.own_response_updated", serial=f"{state.cert.serial_number:x}", url=url)
            return _Cached(der, status.this_update, status.next_update, now, refresh_at, stale_at, url)
        raise error

    async def _post(self, url: str, request: bytes) -> bytes:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(
                    url, data=request, headers={"Content-Type": _CONTENT_TYPE_REQUEST}, allow_redirects=False
                ) as resp,
            ):
                if resp.status != 200:
                    raise UpstreamUnavailable(f"OCSP responder {url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise UpstreamUnavailable(f"OCSP responder {url} sent more than {MAX_RESPONSE_BYTES} bytes")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"cannot reach OCSP responder {url}: {type(exc).__name__}") from None

    def _record_error(self, label: str, state: _State, error: KorpuError, now: dt.datetime) -> None:
        state.last_error, state.last_error_at = error, now
        log.warning("ocsp.own_response_failed", label=label, code=error.fault_code, error=error.message)

    # Background loop and status ----------------------------------------------------------------------------------

    def next_due(self, now: dt.datetime | None = None) -> dt.datetime:
        """When :meth:`run` should refresh next: the earliest refresh time, or a retry soon after a failure."""
        now = now or self._clock()
        due = [now + self._retry]
        for state in self._states.values():
            cached = state.cached
            if cached is None or state.last_error is not None:
                continue  # retried at now + retry interval
            due.append(cached.refresh_at)
        return max(now, min(due))

    async def run(self) -> None:
        """Refresh now, then whenever :meth:`next_due` says, until cancelled; errors are recorded, not raised."""
        while True:
            await self.refresh()
            now = self._clock()
            await asyncio.sleep(max(1.0, (self.next_due(now) - now).total_seconds()))

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Aiohttp ``cleanup_ctx`` entry: run the refresh loop while the app runs, cancel it on shutdown."""
        async with running_task(self.run(), "own-ocsp-responses"):
            yield

    def status(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """A JSON-ready summary per label for the admin API and health checks."""
        now = now or self._clock()
        result: dict[str, Any] = {}
        for label, state in self._states.items():
            cached = state.cached
            error = state.last_error
            result[label] = {
                "serial": f"{state.cert.serial_number:x}",
                "fresh": cached is not None and now < cached.stale_at,
                "this_update": None if cached is None else _iso(cached.this_update),
                "next_update": None if cached is None or cached.next_update is None else _iso(cached.next_update),
                "refresh_at": None if cached is None else _iso(cached.refresh_at),
                "stale_at": None if cached is None else _iso(cached.stale_at),
                "url": None if cached is None else cached.url,
                "last_success": None if state.last_success is None else _iso(state.last_success),
                "last_error": None
                if error is None
                else {
                    "code": error.fault_code,
                    "message": error.message,
                    "at": None if state.last_error_at is None else _iso(state.last_error_at),
                },
            }
        return result


def _issuing_ca(conf: GlobalConf, issuer: x509.Certificate) -> ApprovedCA:
    """The approved CA whose top or intermediate certificate is ``issuer``."""
    der = issuer.public_bytes(Encoding.DER)
    for ca in conf.cas:
        if der == ca.top_cert or der in ca.intermediate_certs:
            return ca
    raise CertificateInvalid(f"{issuer.subject.rfc4514_string()} is not an approved certification authority")


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
