"""Everything a running security server holds, built once and shared by its listeners.

The message proxies need the member's signing key and the server's authentication certificate, which exist only
after the registration was approved; :meth:`ServerRuntime.credentials` builds them on first use (and again if
the token's certificates change) and otherwise raises a clear fault.  Objects that depend on global
configuration (TLS contexts, rights indexes) are keyed by its version and rebuilt only when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import adapters.testservice  # noqa: F401 - registers the built-in test service adapter
from adapters.base import Adapter, AdapterContext, DescribedAdapter
from adapters.base import create as create_adapter
from bridge.anchor import ConfigurationAnchor
from bridge.errors import ConfigError, KorpuError, TokenError
from bridge.fsutil import write_atomic
from bridge.globalconf import GlobalConf
from bridge.identifiers import ServiceId, SubsystemId
from bridge.logsetup import get_logger
from bridge.pki.token import SoftwareToken
from bridge.signature import MessageSigner
from policies.local import LocalPolicy
from security_server.backends import AdapterBackend, Backend, HttpBackend
from security_server.bus import LocalBus
from security_server.certcheck import CertificateChecker, PeerBinding
from security_server.confclient import GlobalConfClient
from security_server.config import AccessRule, ServerConfig, ServiceConfig
from security_server.messagelog.store import SqlLogStore
from security_server.messagelog.timestamper import Timestamper
from security_server.messagelog.writer import MessageLog
from security_server.ocsp_cache import OwnOcspResponses
from security_server.peers import PinningConnector, Router
from security_server.registration import RegistrationState
from security_server.replay import ReplayGuard
from security_server.tls import TlsContexts, TlsIdentity

__all__ = ["Credentials", "ProvidedService", "ServerRuntime"]

log = get_logger(__name__)

#: Labels of this server's keys in its token.
AUTH, SIGN, INTERNAL = "auth", "sign", "internal"


@dataclass(frozen=True)
class ProvidedService:
    """A service this server provides: its configuration and its backend."""

    id: ServiceId
    config: ServiceConfig
    backend: Backend
    description: bytes | None


@dataclass
class Credentials:
    """What the proxies sign and authenticate with (exists once the certificates are installed)."""

    signer: MessageSigner
    sign_cert: x509.Certificate
    auth_cert: x509.Certificate
    tls: TlsContexts
    ocsp: OwnOcspResponses
    ocsp_task: asyncio.Task[None] | None = None


@dataclass
class ServerRuntime:
    """A running security server: configuration, token, global configuration and the exchange machinery."""

    state_dir: Path
    config: ServerConfig
    token: SoftwareToken
    pin: str = field(repr=False)
    confclient: GlobalConfClient
    registration: RegistrationState
    admin_key_hash: str
    local_policy: LocalPolicy
    checker: CertificateChecker = field(init=False)
    binding: PeerBinding = field(default_factory=PeerBinding)
    router: Router = field(default_factory=Router)
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    #: (peer, consumer request id) pairs seen within the replay window: a reused id is refused, so each logged
    #: exchange stays individually addressable for evidence.
    request_ids: ReplayGuard = field(default_factory=ReplayGuard)
    services: dict[tuple[SubsystemId, str, str | None], ProvidedService] = field(default_factory=dict)
    peer_session: aiohttp.ClientSession | None = None
    backend_session: aiohttp.ClientSession | None = None
    log_store: SqlLogStore = field(init=False)
    message_log: MessageLog = field(init=False)
    timestamper: Timestamper = field(init=False)
    _is_certs: dict[str, frozenset[bytes]] = field(default_factory=dict)
    _adapters: dict[tuple[str, tuple[tuple[str, str], ...]], Adapter] = field(default_factory=dict)
    _buses: list[LocalBus] = field(default_factory=list)
    soap_reads: asyncio.Semaphore = field(init=False)
    #: The plain-HTTP client proxy's URL once it listens (adapters call the bus through it).
    client_proxy_url: str | None = None
    _credentials: Credentials | None = None
    _credentials_key: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.checker = CertificateChecker(self.conf)
        self.soap_reads = asyncio.Semaphore(self.config.limits.max_concurrent_soap_reads)
        # The message log is never optional: a security server without one does not carry messages.
        settings = self.config.message_log
        self.log_store = SqlLogStore(settings.database_url(self.state_dir), self.state_dir / settings.bodies)
        interval = settings.timestamping_interval_seconds
        self.timestamper = Timestamper(
            self.log_store,
            self._tsas,
            interval_s=float(interval) if interval is not None else self._conf_timestamping_interval(),
            size_trigger=settings.timestamping_batch_records,
            grace_s=float(settings.grace_seconds),
            ca_certs=self._ca_certs,
        )
        self.message_log = MessageLog(self.log_store, server_id=self.config.server_id, timestamper=self.timestamper)

    def _tsas(self) -> list[tuple[str, x509.Certificate]]:
        """The timestamp authorities global configuration names, with their certificates."""
        return [(t.url, x509.load_der_x509_certificate(t.cert)) for t in self.conf().tsas]

    def _ca_certs(self) -> set[bytes]:
        """The CA certificates global configuration approves (what evidence containers carry for auditors)."""
        return {der for ca in self.conf().cas for der in (ca.top_cert, *ca.intermediate_certs)}

    def _conf_timestamping_interval(self) -> float:
        try:
            return float(self.conf().params.timestamping_interval_s)
        except KorpuError:
            return 60.0

    # Building --------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, config: ServerConfig, pin: str) -> ServerRuntime:
        """Open a security server's state directory with ``pin``; nothing listens yet."""
        from security_server.app import ADMIN_KEY_FILE

        token = SoftwareToken.open(state_dir / "token", pin)
        anchor = ConfigurationAnchor.load(config.anchor_path(state_dir))
        kwargs: dict[str, Any] = {}
        if config.refresh_seconds is not None:
            kwargs["refresh_interval_s"] = config.refresh_seconds
        confclient = GlobalConfClient(anchor, state_dir / "cache", **kwargs)
        confclient.load_cached()
        registration = RegistrationState.load(state_dir)
        admin_key_hash = (state_dir / ADMIN_KEY_FILE).read_text(encoding="utf-8").strip()
        runtime = cls(
            state_dir=state_dir,
            config=config,
            token=token,
            pin=pin,
            confclient=confclient,
            registration=registration,
            admin_key_hash=admin_key_hash,
            local_policy=_local_policy(config),
        )
        return runtime

    def conf(self) -> GlobalConf:
        """The current global configuration (raises OutdatedGlobalConf / GlobalConfUnavailable)."""
        return self.confclient.current()

    def credentials(self) -> Credentials:
        """The signing and TLS credentials; raises a fault while the certificates are not installed."""
        auth_cert = self.token.certificate(AUTH)
        sign_cert = self.token.certificate(SIGN)
        if auth_cert is None or sign_cert is None:
            raise TokenError("this security server's certificates are not installed yet (registration pending)")
        key = (auth_cert.serial_number, sign_cert.serial_number)
        if self._credentials is not None and self._credentials_key == key:
            return self._credentials
        conf = self.conf()
        issuing = {cert.subject: cert for cert in _intermediates(conf)}
        sign_chain = tuple(c for c in (issuing.get(sign_cert.issuer),) if c is not None)
        auth_chain = tuple(c for c in (issuing.get(auth_cert.issuer),) if c is not None)
        identity = TlsIdentity.from_token(self.token, AUTH, self.pin, self.state_dir, chain=auth_chain)
        ocsp = OwnOcspResponses(
            self.conf,
            {AUTH: (auth_cert, _issuer_of(auth_cert, conf)), SIGN: (sign_cert, _issuer_of(sign_cert, conf))},
        )
        creds = Credentials(
            signer=MessageSigner(self.token.private_key(SIGN), sign_cert, sign_chain),
            sign_cert=sign_cert,
            auth_cert=auth_cert,
            tls=TlsContexts(identity),
            ocsp=ocsp,
        )
        if self._credentials is not None and self._credentials.ocsp_task is not None:
            self._credentials.ocsp_task.cancel()
        self._credentials, self._credentials_key = creds, key
        creds.ocsp_task = asyncio.get_running_loop().create_task(ocsp.run(), name="own-ocsp-refresh")
        return creds

    def load_services(self) -> None:
        """Build the backends of the services in server.yaml (descriptions from files or from the adapter)."""
        assert self.backend_session is not None
        owner = self.config.id.owner
        for svc in self.config.services:
            service_id = ServiceId(owner.subsystem(svc.subsystem), svc.code, svc.version)
            backend: Backend
            adapter: Adapter | None = None
            if svc.url is not None:
                backend = HttpBackend(svc.url, self.backend_session, svc.timeout_seconds)
            else:
                assert svc.adapter is not None
                adapter = self._adapter(svc.adapter, svc.options or {})
                backend = AdapterBackend(adapter, svc.timeout_seconds)
            description = None
            if svc.description is not None:
                path = self.state_dir / svc.description
                try:
                    description = path.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"{path}: cannot read the description of {svc.code} ({exc.strerror})") from None
            elif isinstance(adapter, DescribedAdapter):
                described = {d.code: d for d in adapter.describe()}
                if svc.code in described:
                    description = described[svc.code].document
            self.services[(service_id.provider, svc.code, svc.version)] = ProvidedService(
                service_id, svc, backend, description
            )

    def _adapter(self, name: str, options: dict[str, str]) -> Adapter:
        """One adapter instance per name and options, shared by the services that use it."""
        key = (name, tuple(sorted(options.items())))
        adapter = self._adapters.get(key)
        if adapter is None:
            bus = None
            if "bus_client" in options:
                client = self.config.id.owner.subsystem(options["bus_client"]).path()
                bus = LocalBus(client, lambda: self.client_proxy_url)
                self._buses.append(bus)
            adapter = create_adapter(name, AdapterContext(options=options, state_dir=self.state_dir, bus=bus))
            self._adapters[key] = adapter
        return adapter

    def service(self, service_id: ServiceId) -> ProvidedService | None:
        """The provided service matching ``service_id`` (exact version, else the version-less entry)."""
        provider, code = service_id.provider, service_id.service_code
        return self.services.get((provider, code, service_id.service_version)) or self.services.get(
            (provider, code, None)
        )

    def services_of(self, provider: SubsystemId) -> list[ProvidedService]:
        """Every service this server provides for ``provider``."""
        return [s for (p, _c, _v), s in sorted(self.services.items(), key=lambda kv: str(kv[0])) if p == provider]

    def client_is_certs(self, code: str) -> frozenset[bytes]:
        """DER of the TLS client certificates registered for client subsystem ``code`` (https-cert mode)."""
        cached = self._is_certs.get(code)
        if cached is None:
            settings = self.config.client(code)
            ders = []
            for name in settings.is_certificates if settings is not None else ():
                path = self.state_dir / name
                try:
                    for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                        ders.append(cert.public_bytes(serialization.Encoding.DER))
                except (OSError, ValueError):
                    raise ConfigError(f"{path}: cannot read the TLS certificate of client {code}") from None
            cached = self._is_certs[code] = frozenset(ders)
        return cached

    def internal_tls_context(self) -> ssl.SSLContext:
        """TLS server context for the client proxy's HTTPS listener (X-Road's "internal" TLS certificate).

        The key lives in the token (label ``internal``) with a self-signed certificate made on first use;
        information systems trust that certificate (``tls/internal.pem``).  Clients in ``https-cert`` mode
        present certificates that are loaded as the only trusted ones; others need not present any.
        """
        from security_server.tls import self_signed_internal_cert

        if not self.token.has_key(INTERNAL):
            key = self.token.generate_key(INTERNAL, usage="tls")
            del key
        cert = self.token.certificate(INTERNAL)
        if cert is None:
            cert = self_signed_internal_cert(self.token.private_key(INTERNAL), self.config.id.server_code)
            self.token.store_certificate(INTERNAL, cert)
        cert_file = self.state_dir / "tls" / "internal.pem"
        write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(
            cert_file, Path(self.token.directory) / f"{INTERNAL}.key.pem", password=self.pin.encode()
        )
        trusted = [
            der for c in self.config.clients if c.connection == "https-cert" for der in self.client_is_certs(c.code)
        ]
        if trusted:
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=b"".join(trusted))
        return context

    def client_ssl(self) -> ssl.SSLContext:
        """The TLS client context for the current global configuration."""
        return self.credentials().tls.for_conf(self.conf())[1]

    def server_ssl(self) -> ssl.SSLContext:
        """The TLS server context for the current global configuration."""
        return self.credentials().tls.for_conf(self.conf())[0]

    # Lifecycle -------------------------------------------------------------------------------------------------

    async def sessions(self, app: web.Application) -> AsyncIterator[None]:
        """Aiohttp cleanup context: HTTP client sessions to peers and to backends."""
        connector = PinningConnector(self.conf, limit=200, limit_per_host=100, keepalive_timeout=60)
        self.peer_session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.backend_session = aiohttp.ClientSession(auto_decompress=False)
        self.load_services()
        await self.message_log.start()
        stamping = asyncio.create_task(self.timestamper.run(), name="messagelog-timestamper")
        # Imported here: the archiver pulls in the archive module, which nothing else at start-up needs.
        from security_server.audit_api import evidence_certificates
        from security_server.messagelog.archiver import Archiver

        settings = self.config.message_log
        archiver = Archiver(
            self.log_store,
            self.state_dir / settings.archive_dir,
            lambda: evidence_certificates(self.conf()),
            archive_after_s=settings.archive_after_days * 86400.0,
            retention_days=settings.retention_days,
            interval_s=float(settings.archive_interval_seconds),
        )
        archiving = asyncio.create_task(archiver.run(), name="messagelog-archiver")
        try:
            yield
        finally:
            for task in (archiving, stamping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.message_log.stop()
            await asyncio.to_thread(self.log_store.close)
            for bus in self._buses:
                await bus.close()
            for adapter in self._adapters.values():
                closer = getattr(adapter, "close", None)
                if closer is not None:
                    await closer()
            await self.peer_session.close()
            await self.backend_session.close()
            if self._credentials is not None and self._credentials.ocsp_task is not None:
                self._credentials.ocsp_task.cancel()

    async def warm_up(self) -> None:
        """Build credentials and fetch OCSP responses now, if the certificates are installed (best effort)."""
        try:
            creds = self.credentials()
            await creds.ocsp.refresh(force=True)
        except KorpuError as exc:
            log.warning("not ready for traffic yet", fault=exc.fault_code, error=exc.message)


def _intermediates(conf: GlobalConf) -> list[x509.Certificate]:
    certs = []
    for ca in conf.cas:
        certs.append(x509.load_der_x509_certificate(ca.top_cert))
        certs.extend(x509.load_der_x509_certificate(der) for der in ca.intermediate_certs)
    return certs


def _issuer_of(cert: x509.Certificate, conf: GlobalConf) -> x509.Certificate:
    for candidate in _intermediates(conf):
        if candidate.subject == cert.issuer:
            return candidate
    raise TokenError("the issuer of this server's certificate is not an approved CA in global configuration")


def _local_policy(config: ServerConfig) -> LocalPolicy:
    def rule(r: AccessRule) -> dict[str, Any]:
        return {"subject": r.subject, "service": f"SERVICE:{r.service}", "method": r.method, "path": r.path}

    return LocalPolicy.from_mapping(
        {
            "groups": {g.code: list(g.members) for g in config.local_groups},
            "grants": [rule(r) for r in config.grants],
            "denies": [rule(r) for r in config.denies],
        }
    )


def utcnow() -> dt.datetime:
    """The current UTC time."""
    return dt.datetime.now(dt.UTC)
