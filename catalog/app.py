"""The central server process: one aiohttp application composed of its parts.

Routes:

* ``/api/v1/…`` and ``/openapi.json`` — the management API (:mod:`catalog.api`);
* ``/globalconf`` — the signed global configuration (:mod:`catalog.publisher`);
* ``/ocsp`` — the OCSP responder for the federation CA (:mod:`catalog.ocsp`), unless an external one is named;
* ``/tsa`` — the RFC 3161 timestamp authority (:mod:`catalog.tsa`), unless an external one is named.

Every change made through the management API triggers an immediate regeneration of global configuration, so an
approval reaches security servers at their next refresh rather than after the regeneration interval.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import ConfigError
from bridge.globalconf import ApprovedCA, GlobalConfParams, TimestampingService
from bridge.pki.token import SoftwareToken
from catalog.api import add_management_routes, error_middleware
from catalog.ca import CertificateAuthority
from catalog.certregistry import CertRecord
from catalog.config import CentralConfig
from catalog.ocsp import OcspResponder
from catalog.publisher import CatalogPart, GlobalConfPublisher
from catalog.store import CatalogStore, RegistrationService
from catalog.tsa import TimestampAuthority

__all__ = ["CentralServer"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class CentralServer:
    """The opened parts of a central server's state directory."""

    state_dir: Path
    config: CentralConfig
    token: SoftwareToken
    ca: CertificateAuthority
    store: CatalogStore
    registration: RegistrationService
    publisher: GlobalConfPublisher
    ocsp: OcspResponder | None
    tsa: TimestampAuthority | None
    requests_served: Counter[str] = field(default_factory=Counter)

    @classmethod
    def open(cls, state_dir: Path, config: CentralConfig, pin: str) -> CentralServer:
        """Unlock the token with ``pin`` and open the catalog; nothing listens yet."""
        token = SoftwareToken.open(state_dir / "token", pin)
        ca = CertificateAuthority.load(token, ocsp_url=config.effective_ocsp_url)
        store = CatalogStore.open(config.database_url(state_dir), instance=config.instance)

        ocsp: OcspResponder | None = None
        responder_certs: tuple[bytes, ...] = ()
        if config.ocsp_url is None:
            ocsp_cert = _required_cert(token, "ocsp")

            async def lookup(serial: int) -> CertRecord | None:
                return await asyncio.to_thread(store.certificate, serial)

            ocsp = OcspResponder(ca.issuing_cert, ocsp_cert, token.private_key("ocsp"), lookup)
            responder_certs = (_der(ocsp_cert),)

        tsa: TimestampAuthority | None = None
        if config.tsa_url is None:
            tsa_cert = _required_cert(token, "tsa")
            tsa = TimestampAuthority(tsa_cert, token.private_key("tsa"), chain=ca.chain)
        else:
            tsa_cert = _load_pem_cert(state_dir, config.tsa_certificate)

        gc = config.globalconf
        publisher = GlobalConfPublisher(
            instance=config.instance,
            central_server_url=config.base_url,
            signing_key=token.private_key("conf-signing"),
            signing_cert=_required_cert(token, "conf-signing"),
            content_source=lambda: _content(store),
            next_version=lambda: asyncio.to_thread(store.next_globalconf_version),
            cas=(
                ApprovedCA(
                    name=ca.issuing_cert.subject.rfc4514_string(),
                    top_cert=_der(ca.root_cert),
                    intermediate_certs=(_der(ca.issuing_cert),),
                    ocsp_urls=(config.effective_ocsp_url,),
                    ocsp_responder_certs=responder_certs,
                ),
            ),
            tsas=(
                TimestampingService(name=f"{config.instance} TSA", url=config.effective_tsa_url, cert=_der(tsa_cert)),
            ),
            params=GlobalConfParams(
                timestamping_interval_s=gc.timestamping_interval_seconds,
                refresh_interval_s=gc.refresh_seconds,
                ocsp_freshness_s=gc.ocsp_freshness_seconds,
            ),
            expiry_s=gc.expiry_seconds,
            regenerate_interval_s=gc.regenerate_seconds,
        )
        registration = RegistrationService(
            store, ca, auto_approve=config.auto_approve, cert_validity_days=config.cert_validity_days
        )
        return cls(state_dir, config, token, ca, store, registration, publisher, ocsp, tsa)

    def create_app(self) -> web.Application:
        """The whole central server as one aiohttp application."""
        app = web.Application(middlewares=[error_middleware, self._notify_on_change])
        add_management_routes(app, self.store, self.registration)
        app.router.add_get("/globalconf", self.publisher.handle)
        if self.ocsp is not None:
            app.router.add_routes(self.ocsp.routes("/ocsp"))
        if self.tsa is not None:
            app.router.add_routes(self.tsa.routes("/tsa"))
        app.cleanup_ctx.append(self.publisher.cleanup_ctx)
        app.on_cleanup.append(self._close)
        return app

    @web.middleware
    async def _notify_on_change(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Requests per interface (api, globalconf, ocsp, tsa, …): what operators watch, and what shows that
        # message exchange never calls the central server.
        self.requests_served[request.path.split("/", 2)[1] or "/"] += 1
        response = await handler(request)
        # Any successful write to the catalog may change global configuration: regenerate now.
        if request.method not in ("GET", "HEAD") and request.path.startswith("/api/") and response.status < 400:
            self.publisher.notify_changed()
        return response

    async def _close(self, _app: web.Application) -> None:
        self.store.close()


async def _content(store: CatalogStore) -> CatalogPart:
    return await asyncio.to_thread(store.globalconf_content)


def _required_cert(token: SoftwareToken, label: str) -> x509.Certificate:
    cert = token.certificate(label)
    if cert is None:
        raise ConfigError(f"the central server's token has no {label!r} certificate; was `korpu central init` run?")
    return cert


def _load_pem_cert(state_dir: Path, name: str | None) -> x509.Certificate:
    if name is None:
        raise ConfigError("tsa_certificate is required with tsa_url")
    path = state_dir / name
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"{path}: cannot read the external TSA's certificate (PEM)") from None
