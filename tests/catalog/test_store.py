"""Catalog store tests: every test runs on SQLite and on the live PostgreSQL through the ``db_url`` fixture."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.errors import (
    ConfigError,
    Conflict,
    DatabaseError,
    DuplicateRegistration,
    InvalidApiKey,
    InvalidCsr,
    InvalidIdentifier,
    InvalidRequest,
    InvalidState,
    NotFound,
)
from bridge.globalconf import AccessRight, GlobalGroup, MemberInfo, SecurityServerInfo, ServiceInfo
from bridge.identifiers import GlobalGroupId, MemberId, SecurityServerId
from catalog.certregistry import CertKind
from catalog.db import Database
from catalog.store import (
    MIGRATIONS,
    CatalogStore,
    ClientRegistration,
    Fee,
    PublicServiceMetadata,
    RegistrationService,
    RequestState,
    Role,
    ServerRegistration,
    ServiceSpec,
)
from tests.support.pki import build_pki

OWNER = MemberId("AZ", "GOV", "1400057421")
SERVER = SecurityServerId(OWNER, "ss1")
BANK = MemberId("AZ", "COM", "9900011122")


# Helpers shared with test_api.py ------------------------------------------------------------------------------


def csr_pem() -> str:
    """A fresh, valid P-256 CSR in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class FakeCA:
    """Issues real certificates for the CSR's key, signed by a throwaway key; can be told to reuse a serial."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.forced_serial: int | None = None
        self.issued: list[x509.Certificate] = []

    def _issue(self, csr: x509.CertificateSigningRequest, cn: str, validity_days: int) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        serial = self.forced_serial if self.forced_serial is not None else x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")]))
            .public_key(csr.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=validity_days))
            .sign(self._key, hashes.SHA256())
        )
        self.issued.append(cert)
        return cert

    def issue_auth_cert(
        self, csr: x509.CertificateSigningRequest, server: SecurityServerId, owner_name: str, *, validity_days: int
    ) -> x509.Certificate:
        return self._issue(csr, f"auth {server.path()} {owner_name}", validity_days)

    def issue_sign_cert(
        self, csr: x509.CertificateSigningRequest, member: MemberId, member_name: str, *, validity_days: int
    ) -> x509.Certificate:
        return self._issue(csr, f"sign {member.path()} {member_name}", validity_days)


def server_registration(
    server: SecurityServerId = SERVER, codes: tuple[str, ...] = ("population",)
) -> ServerRegistration:
    """A valid server registration request with fresh CSRs."""
    return ServerRegistration(server, "Dövlət Agentliyi", "ss1.gov.az:5500", csr_pem(), csr_pem(), codes)


def self_signed(serial: int | None = None) -> x509.Certificate:
    """A self-signed certificate with the given (or a random) serial number."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# Fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def store(db_url: str) -> CatalogStore:
    return CatalogStore.open(db_url, instance="AZ")


@pytest.fixture
def ca() -> FakeCA:
    return FakeCA()


@pytest.fixture
def service(store: CatalogStore, ca: FakeCA) -> RegistrationService:
    return RegistrationService(store, ca)


@pytest.fixture
def registered(service: RegistrationService) -> str:
    """SERVER registered and approved, with subsystem ``population``; returns the request id."""
    request = service.submit(server_registration())
    service.approve(request.id, decided_by="officer")
    return request.id


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# Migrations ----------------------------------------------------------------------------------------------------


def test_open_twice_migrates_once(db_url: str) -> None:
    """Opening an existing catalog again applies nothing twice and records each migration version once."""
    CatalogStore.open(db_url, instance="AZ")
    store = CatalogStore.open(db_url, instance="AZ")
    assert store.schema_version() == MIGRATIONS[-1].version
    with store.db.transaction(write=False) as tx:
        rows = tx.query("SELECT version FROM schema_migrations ORDER BY version")
    assert rows == [(m.version,) for m in MIGRATIONS]


def test_unreachable_database_is_a_database_error_without_internals() -> None:
    """A connection failure surfaces as DatabaseError whose message names no SQL, host or driver text."""
    db = Database("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(DatabaseError) as info, db.transaction():
        pass
    assert info.value.message == "the catalog database is unavailable"


def test_unsupported_url_is_refused() -> None:
    """Only sqlite and postgresql URLs are accepted."""
    with pytest.raises(DatabaseError) as info:
        Database("mysql://x/y")
    assert "mysql" in info.value.message


# Registration lifecycle ----------------------------------------------------------------------------------------


def test_server_registration_lifecycle(store: CatalogStore, service: RegistrationService, ca: FakeCA) -> None:
    """Approval records the request state, member, subsystem, server, auth hash, clients and both cert records."""
    request = service.submit(server_registration())
    assert request.state is RequestState.SUBMITTED
    assert store.status()["pending_requests"] == 1

    approved = service.approve(request.id, decided_by="officer", comment="ok")

    auth, sign = ca.issued
    assert (approved.state, approved.decided_by, approved.comment) == (RequestState.APPROVED, "officer", "ok")
    assert (approved.auth_cert_der, approved.sign_cert_der) == (der(auth), der(sign))
    member = store.member(OWNER)
    assert member is not None
    assert (member.name, member.subsystems) == ("Dövlət Agentliyi", ("population",))
    server = store.server(SERVER)
    assert server is not None
    assert server.address == "ss1.gov.az:5500"
    assert server.auth_cert_hashes == (hashlib.sha256(der(auth)).hexdigest(),)
    assert server.clients == (OWNER, OWNER.subsystem("population"))
    records = {r.serial: r.kind for r in store.certificates()}
    assert records == {auth.serial_number: CertKind.AUTH, sign.serial_number: CertKind.SIGN}
    assert store.status()["pending_requests"] == 0


def test_duplicate_registrations_are_refused(store: CatalogStore, service: RegistrationService) -> None:
    """A pending request or a registered server blocks another request; a rejected one does not."""
    first = service.submit(server_registration())
    with pytest.raises(DuplicateRegistration):
        service.submit(server_registration())
    service.reject(first.id, decided_by="officer", comment="typo")
    second = service.submit(server_registration())
    service.approve(second.id, decided_by="officer")
    with pytest.raises(DuplicateRegistration) as info:
        service.submit(server_registration())
    assert info.value.fault_code == "Client.DuplicateRegistration"
    with pytest.raises(DuplicateRegistration):
        store.create_member(OWNER, "again")


def test_decided_requests_cannot_be_decided_again(service: RegistrationService, registered: str) -> None:
    """Approving or rejecting anything not submitted is InvalidState; an unknown id is NotFound."""
    with pytest.raises(InvalidState):
        service.approve(registered, decided_by="officer")
    with pytest.raises(InvalidState):
        service.reject(registered, decided_by="officer")
    rejected = service.submit(server_registration(SecurityServerId(OWNER, "ss2")))
    service.reject(rejected.id, decided_by="officer")
    with pytest.raises(InvalidState):
        service.store.approve_registration(
            rejected.id, decided_by="x", auth_cert=self_signed(), sign_cert=self_signed()
        )
    with pytest.raises(NotFound):
        service.approve("00000000-0000-4000-8000-000000000000", decided_by="officer")
    with pytest.raises(NotFound):
        service.approve("not-a-uuid", decided_by="officer")


def test_failed_approval_leaves_nothing_half_written(
    store: CatalogStore, service: RegistrationService, ca: FakeCA
) -> None:
    """If a late insert of an approval fails, the request stays submitted and nothing it implies is stored."""
    request = service.submit(server_registration())
    taken = store.record_certificate(CertKind.TLS, self_signed(4242))
    ca.forced_serial = 4242  # both issued certificates collide with an existing record

    with pytest.raises(Conflict):
        service.approve(request.id, decided_by="officer")

    after = store.registration_request(request.id)
    assert after is not None
    assert (after.state, after.auth_cert_der) == (RequestState.SUBMITTED, None)
    assert store.member(OWNER) is None
    assert store.servers() == []
    assert store.subsystems() == []
    assert store.certificates() == [taken]
    assert store.status()["pending_requests"] == 1


def test_malformed_csr_is_refused_at_submission(store: CatalogStore, service: RegistrationService) -> None:
    """A CSR that does not parse is InvalidCsr and no request is recorded."""
    bad = ServerRegistration(
        SERVER, "Agency", "ss1.gov.az:5500", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", csr_pem()
    )
    with pytest.raises(InvalidCsr):
        service.submit(bad)
    assert store.registration_requests() == []


@pytest.mark.parametrize("address", ["ss1.gov.az", "ss1.gov.az:0", "ss1.gov.az:70000", "bad host:80", ":80"])
def test_bad_addresses_are_invalid_requests(address: str) -> None:
    """Server addresses must be host:port with a port in 1..65535."""
    with pytest.raises(InvalidRequest):
        ServerRegistration(SERVER, "Agency", address, "x", "y")


def test_auto_approve_approves_at_submission(store: CatalogStore, ca: FakeCA) -> None:
    """With auto_approve the submitted request comes back approved and the server is registered."""
    request = RegistrationService(store, ca, auto_approve=True).submit(server_registration())
    assert (request.state, request.decided_by) == (RequestState.APPROVED, "auto-approve")
    assert [s.id for s in store.servers()] == [SERVER]


def test_client_registration(store: CatalogStore, service: RegistrationService, registered: str) -> None:
    """A client request adds a subsystem (and its new member) as a client of an existing server."""
    bank_app = BANK.subsystem("loans")
    with pytest.raises(InvalidRequest):
        service.submit(ClientRegistration(SERVER, bank_app))  # unknown member and no name
    request = service.submit(ClientRegistration(SERVER, bank_app, "Bank ASC"))
    with pytest.raises(DuplicateRegistration):
        service.submit(ClientRegistration(SERVER, bank_app, "Bank ASC"))
    service.approve(request.id, decided_by="officer")
    server = store.server(SERVER)
    assert server is not None
    assert bank_app in server.clients
    member = store.member(BANK)
    assert member is not None
    assert (member.name, member.subsystems) == ("Bank ASC", ("loans",))
    with pytest.raises(DuplicateRegistration):
        service.submit(ClientRegistration(SERVER, bank_app))
    with pytest.raises(NotFound):
        service.submit(ClientRegistration(SecurityServerId(BANK, "nope"), bank_app))


# Revocation and certificates -----------------------------------------------------------------------------------


def test_revoke_server_revokes_its_certificates(store: CatalogStore, registered: str, ca: FakeCA) -> None:
    """Revoking a server removes it from the catalog content and marks its auth and sign certs revoked."""
    revoked = store.revoke_server(SERVER, "keyCompromise")
    assert sorted(r.serial for r in revoked) == sorted(c.serial_number for c in ca.issued)
    assert {r.revocation_reason for r in revoked} == {"keyCompromise"}
    assert store.server(SERVER) is None
    assert store.globalconf_content().servers == ()
    record = store.certificate(ca.issued[0].serial_number)
    assert record is not None
    assert record.revoked is True
    with pytest.raises(NotFound):
        store.revoke_server(SERVER)
    # The member and its subsystem outlive the server.
    assert [m.id for m in store.members()] == [OWNER]


def test_certificate_records(store: CatalogStore) -> None:
    """Certificates are recorded once, read back by serial and revoked once with a valid CRL reason."""
    cert = self_signed()
    record = store.record_certificate(CertKind.OCSP, cert)
    assert (record.serial, record.kind, record.der, record.revoked) == (
        cert.serial_number,
        CertKind.OCSP,
        der(cert),
        False,
    )
    assert record.not_after == cert.not_valid_after_utc
    assert store.certificate(cert.serial_number) == record
    assert store.certificate(1) is None
    with pytest.raises(Conflict):
        store.record_certificate(CertKind.OCSP, cert)
    with pytest.raises(InvalidRequest):
        store.revoke_certificate(cert.serial_number, "because")
    revoked = store.revoke_certificate(cert.serial_number, "superseded")
    assert (revoked.revocation_reason, revoked.revoked) == ("superseded", True)
    with pytest.raises(InvalidState):
        store.revoke_certificate(cert.serial_number, "superseded")
    with pytest.raises(NotFound):
        store.revoke_certificate(7, "superseded")
    assert store.certificates(CertKind.OCSP) == [revoked]
    assert store.certificates(CertKind.AUTH) == []


# Members, groups, services, access rights ----------------------------------------------------------------------


def test_members_and_subsystems_delete_only_when_unused(store: CatalogStore) -> None:
    """A member with subsystems, or a subsystem providing services, cannot be deleted; unused ones can."""
    store.create_member(BANK, "Bank")
    app = store.create_subsystem(BANK.subsystem("loans"))
    with pytest.raises(NotFound):
        store.create_subsystem(MemberId("AZ", "X", "1").subsystem("a"))
    store.create_service(ServiceSpec(app.service("getLoan"), "REST", "Loans"))
    with pytest.raises(Conflict) as info:
        store.delete_member(BANK)
    assert "subsystems" in info.value.message
    with pytest.raises(Conflict):
        store.delete_subsystem(app)
    store.delete_service(app.service("getLoan"))
    store.delete_subsystem(app)
    store.delete_member(BANK)
    assert store.members() == []


def test_global_groups(store: CatalogStore, registered: str) -> None:
    """Groups are created, gain and lose registered members, and cannot be deleted while an access right names them."""
    group = GlobalGroupId("AZ", "banks")
    store.create_group(group, "Licensed banks")
    with pytest.raises(Conflict):
        store.create_group(group, "again")
    with pytest.raises(NotFound):
        store.add_group_member(group, BANK)  # not registered
    population = OWNER.subsystem("population")
    assert store.add_group_member(group, population) == GlobalGroup(group, "Licensed banks", (population,))
    with pytest.raises(Conflict):
        store.add_group_member(group, population)
    store.add_group_member(group, OWNER)
    assert store.update_group(group, "Banks").members == (OWNER, population)
    store.create_service(ServiceSpec(population.service("getPerson"), "REST", "Person"))
    store.grant_access(AccessRight(group, population.service("getPerson")))
    with pytest.raises(Conflict):
        store.delete_group(group)
    assert store.remove_group_member(group, OWNER).members == (population,)
    with pytest.raises(NotFound):
        store.remove_group_member(group, OWNER)
    assert store.groups() == [GlobalGroup(group, "Banks", (population,))]


def test_services_catalog_and_search(store: CatalogStore, registered: str) -> None:
    """Services keep their public-service metadata exactly; ?q= matches every word, case-insensitively."""
    provider = OWNER.subsystem("population")
    meta = PublicServiceMetadata(
        legal_basis="Law No. 123 on Population Registration",
        required_documents=("Şəxsiyyət vəsiqəsi", "application"),
        fee=Fee(Decimal("2.50"), "AZN"),
        duration_text="same day",
        duration_days=1,
        channels=("online", "service-centre"),
        is_e_service=True,
    )
    spec = ServiceSpec(
        provider.service("getPerson", "v1"), "OPENAPI3", "Person data", "Reads a person", "openapi: 3.0.0", None, meta
    )
    created = store.create_service(spec)
    assert created.spec == spec
    store.create_service(
        ServiceSpec(provider.service("getAddress"), "SOAP", "Address", metadata=PublicServiceMetadata())
    )
    with pytest.raises(Conflict):
        store.create_service(spec)

    def ids(query: str) -> list[str]:
        return [s.id.service_code for s in store.services(query)]

    assert ids("") == ["getAddress", "getPerson"]
    assert ids("population LAW") == ["getPerson"]
    assert ids("ŞƏXSİYYƏT") == ids("şəxsiyyət") == ["getPerson"]
    assert ids("service-centre") == ["getPerson"]
    assert ids("free") == ["getAddress"]
    assert ids("%") == []  # wildcards match literally
    assert ids("person nothing") == []

    updated = store.update_service(ServiceSpec(spec.id, "REST", "Person", metadata=PublicServiceMetadata(fee=None)))
    assert (updated.spec.title, updated.spec.metadata.fee, updated.spec.description_doc) == ("Person", None, None)
    with pytest.raises(NotFound):
        store.update_service(ServiceSpec(provider.service("nope"), "REST", "x"))


def test_access_rights(store: CatalogStore, registered: str) -> None:
    """Grants are deduplicated, validated against the service type, filterable and revocable by id."""
    population = OWNER.subsystem("population")
    rest = population.service("getPerson")
    soap = population.service("getAddress")
    store.create_service(ServiceSpec(rest, "REST", "Person"))
    store.create_service(ServiceSpec(soap, "SOAP", "Address"))
    first = store.grant_access(AccessRight(population, rest, "GET", "/persons/*"))
    again = store.grant_access(AccessRight(population, rest, "GET", "/persons/*"))
    assert again == first
    anyone = store.grant_access(AccessRight(OWNER, soap))
    with pytest.raises(InvalidRequest):
        store.grant_access(AccessRight(OWNER, soap, "GET"))
    with pytest.raises(InvalidRequest):
        store.grant_access(AccessRight(OWNER, rest, "FETCH"))
    with pytest.raises(NotFound):
        store.grant_access(AccessRight(GlobalGroupId("AZ", "none"), rest))
    assert [a.id for a in store.access_rights(service=rest)] == [first.id]
    assert [a.id for a in store.access_rights(subject=OWNER)] == [anyone.id]
    store.revoke_access(first.id)
    with pytest.raises(NotFound):
        store.revoke_access(first.id)
    assert [a.right for a in store.access_rights()] == [AccessRight(OWNER, soap)]


# API keys ------------------------------------------------------------------------------------------------------


def test_api_keys(store: CatalogStore) -> None:
    """Keys authenticate with their secret only, carry their roles, are stored hashed and stop working when revoked."""
    key_id, secret = store.create_api_key([Role.OBSERVER, "security-officer"], "ops")
    key = store.authenticate(secret)
    assert (key.key_id, key.roles, key.label) == (key_id, frozenset({Role.OBSERVER, Role.SECURITY_OFFICER}), "ops")
    with store.db.transaction(write=False) as tx:
        stored = tx.one("SELECT secret_hash FROM api_keys WHERE id = ?", (key_id,))
    assert stored == (hashlib.sha256(secret.encode()).hexdigest(),)
    for wrong in (secret + "x", f"{key_id}.", "garbage", "", "knope.abc"):
        with pytest.raises(InvalidApiKey):
            store.authenticate(wrong)
    with pytest.raises(InvalidRequest):
        store.create_api_key(["root"])
    with pytest.raises(InvalidRequest):
        store.create_api_key([])
    assert store.revoke_api_key(key_id).revoked_at is not None
    with pytest.raises(InvalidApiKey):
        store.authenticate(secret)
    with pytest.raises(InvalidState):
        store.revoke_api_key(key_id)
    assert [k.key_id for k in store.api_keys()] == [key_id]


# Global configuration ------------------------------------------------------------------------------------------


def test_globalconf_version_is_persisted_and_increasing(db_url: str) -> None:
    """The version counter increases by one per call and survives reopening the catalog."""
    store = CatalogStore.open(db_url, instance="AZ")
    assert [store.next_globalconf_version() for _ in range(3)] == [1, 2, 3]
    assert CatalogStore.open(db_url, instance="AZ").next_globalconf_version() == 4


def test_globalconf_content(store: CatalogStore, service: RegistrationService, registered: str, ca: FakeCA) -> None:
    """The exported content lists members, servers (owner among clients), groups, services and rights in order."""
    population = OWNER.subsystem("population")
    store.create_member(BANK, "Bank")
    loans = store.create_subsystem(BANK.subsystem("loans"))
    group = GlobalGroupId("AZ", "banks")
    store.create_group(group, "Banks")
    store.add_group_member(group, loans)
    store.create_service(ServiceSpec(population.service("getPerson"), "REST", "Person", description_url="https://x/p"))
    store.grant_access(AccessRight(group, population.service("getPerson"), "GET"))
    store.grant_access(AccessRight(loans, population.service("getPerson")))

    content = store.globalconf_content()

    auth_hash = hashlib.sha256(der(ca.issued[0])).hexdigest()
    assert content.members == (
        MemberInfo(BANK, "Bank", ("loans",)),
        MemberInfo(OWNER, "Dövlət Agentliyi", ("population",)),
    )
    assert content.servers == (SecurityServerInfo(SERVER, "ss1.gov.az:5500", (auth_hash,), (OWNER, population)),)
    assert content.groups == (GlobalGroup(group, "Banks", (loans,)),)
    assert content.services == (ServiceInfo(population.service("getPerson"), "REST", "Person", "https://x/p"),)
    assert content.access_rights == (
        AccessRight(group, population.service("getPerson"), "GET"),
        AccessRight(loans, population.service("getPerson")),
    )
    assert store.globalconf_content() == content
    status = store.status()
    assert (status["members"], status["servers"], status["services"], status["access_rights"]) == (2, 1, 1, 2)


# Instance, creation and review fixes -----------------------------------------------------------------------------


FOREIGN = MemberId("XX", "GOV", "1235")


def test_store_refuses_identifiers_of_another_instance(store: CatalogStore, service: RegistrationService) -> None:
    """Every write naming an identifier of another instance is InvalidIdentifier, whoever calls the store."""
    store.create_member(OWNER, "Owner")
    population = store.create_subsystem(OWNER.subsystem("population"))
    group = store.create_group(GlobalGroupId("AZ", "banks"), "").id
    spec = ServiceSpec(population.service("getPerson"), "REST", "Person")
    store.create_service(spec)
    before = store.globalconf_content()
    attempts: list[Callable[[], object]] = [
        lambda: store.create_member(FOREIGN, "Other"),
        lambda: store.create_subsystem(FOREIGN.subsystem("x")),
        lambda: service.submit(server_registration(SecurityServerId(FOREIGN, "ss-x"))),
        lambda: store.submit_registration(ClientRegistration(SERVER, FOREIGN.subsystem("x"), "Other")),
        lambda: store.create_group(GlobalGroupId("XX", "banks"), ""),
        lambda: store.add_group_member(group, FOREIGN),
        lambda: store.create_service(ServiceSpec(FOREIGN.subsystem("x").service("s"), "REST", "S")),
        lambda: store.update_service(
            ServiceSpec(spec.id, "REST", "Person", metadata=PublicServiceMetadata(responsible_agency=FOREIGN))
        ),
        lambda: store.grant_access(AccessRight(FOREIGN, spec.id)),
        lambda: store.grant_access(AccessRight(GlobalGroupId("XX", "banks"), spec.id)),
        lambda: store.grant_access(AccessRight(OWNER, FOREIGN.subsystem("x").service("s"))),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidIdentifier) as info:
            attempt()
        assert "belongs to X-Road instance XX, but this catalog governs instance AZ" in info.value.message
    assert store.globalconf_content() == before
    assert store.registration_requests() == []


def test_catalog_records_its_instance_and_refuses_another(db_url: str) -> None:
    """The first open records the instance; reopening with it works, with another is ConfigError."""
    CatalogStore.open(db_url, instance="AZ").create_member(OWNER, "Owner")
    assert CatalogStore.open(db_url, instance="AZ").instance == "AZ"
    with pytest.raises(ConfigError) as info:
        CatalogStore.open(db_url, instance="EE")
    assert info.value.message == "the database holds the catalog for instance AZ, not EE"


def test_catalog_from_before_instance_records_is_claimed_only_if_consistent(db_url: str) -> None:
    """A catalog at schema 1 (no catalog_meta) takes the instance at its next open unless its members disagree."""
    db = Database(db_url)
    db.migrate(MIGRATIONS[:1])
    with db.transaction() as tx:
        tx.execute("INSERT INTO members (id, name, created_at) VALUES ('EE/GOV/1', 'Other', '2024-01-01T00:00:00')")
    with pytest.raises(ConfigError) as info:
        CatalogStore.open(db_url, instance="AZ")
    assert "EE/GOV/1" in info.value.message
    assert CatalogStore.open(db_url, instance="EE").schema_version() == MIGRATIONS[-1].version


def test_create_refuses_a_database_that_holds_a_catalog(db_url: str) -> None:
    """create() refuses a database holding a catalog (recorded instance or an older schema) and changes nothing."""
    store, secret = CatalogStore.create(db_url, instance="AZ")
    with pytest.raises(ConfigError) as info:
        CatalogStore.create(db_url, instance="EE")
    assert info.value.message == "the database already holds a catalog for instance AZ; refusing to initialise over it"
    assert [k.key_id for k in store.api_keys()] == [store.authenticate(secret).key_id]


def test_create_refuses_a_catalog_without_instance_record(db_url: str) -> None:
    """A schema-1 catalog (no catalog_meta yet) is a catalog too: create() refuses it."""
    Database(db_url).migrate(MIGRATIONS[:1])
    with pytest.raises(ConfigError) as info:
        CatalogStore.create(db_url, instance="AZ")
    assert info.value.message == "the database already holds a catalog; refusing to initialise over it"


def test_create_is_all_or_nothing(db_url: str) -> None:
    """If any write of create() fails, the database is left without a catalog, so a retry starts clean."""
    cert = self_signed(4242)
    with pytest.raises(Conflict):
        CatalogStore.create(db_url, instance="AZ", certificates=[(CertKind.ROOT_CA, cert), (CertKind.TLS, cert)])
    with Database(db_url).transaction(write=False) as tx:
        assert (tx.table_exists("schema_migrations"), tx.table_exists("catalog_meta"), tx.table_exists("members")) == (
            False,
            False,
            False,
        )
    store, secret = CatalogStore.create(db_url, instance="AZ", certificates=[(CertKind.ROOT_CA, cert)])
    assert store.authenticate(secret).roles == frozenset({Role.SYSTEM_ADMINISTRATOR})
    assert [(c.serial, c.kind) for c in store.certificates()] == [(4242, CertKind.ROOT_CA)]
    assert store.instance == "AZ"


def test_approval_issues_certificates_with_the_configured_validity(store: CatalogStore, tmp_path: Path) -> None:
    """RegistrationService passes cert_validity_days to the real CA: both issued certificates last that long."""
    pki = build_pki(tmp_path)
    service = RegistrationService(store, pki.ca, cert_validity_days=90)
    request = service.submit(server_registration())
    approved = service.approve(request.id, decided_by="officer")
    assert approved.auth_cert_der is not None
    assert approved.sign_cert_der is not None
    for der_bytes in (approved.auth_cert_der, approved.sign_cert_der):
        cert = x509.load_der_x509_certificate(der_bytes)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=90)


def test_same_key_for_auth_and_sign_is_invalid_csr(store: CatalogStore, service: RegistrationService) -> None:
    """One key in both CSRs is refused at submission (InvalidCsr) and nothing is recorded."""
    same = csr_pem()
    with pytest.raises(InvalidCsr):
        service.submit(ServerRegistration(SERVER, "Owner", "ss1.gov.az:5500", same, same))
    assert store.registration_requests() == []


@pytest.mark.parametrize("reason", ["certificateHold", "removeFromCRL"])
def test_non_final_revocation_reasons_are_refused(store: CatalogStore, registered: str, reason: str) -> None:
    """Neither certificateHold nor removeFromCRL is accepted as a reason, for certificates or servers."""
    serial = store.certificates()[0].serial
    with pytest.raises(InvalidRequest):
        store.revoke_certificate(serial, reason)
    with pytest.raises(InvalidRequest):
        store.revoke_server(SERVER, reason)
    assert [c.revoked for c in store.certificates()] == [False, False]
    assert store.revoke_certificate(serial, "superseded").revocation_reason == "superseded"


@pytest.mark.parametrize("secret", ["k0123.\udcff\udcfe", "k0123.ключ", "k0123.a\x00b", "\udcff.x"])
def test_secrets_that_cannot_be_keys_are_invalid(store: CatalogStore, secret: str) -> None:
    """Non-ASCII (also undecodable, surrogate-escaped) or control characters in a secret are InvalidApiKey."""
    with pytest.raises(InvalidApiKey):
        store.authenticate(secret)
