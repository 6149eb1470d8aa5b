"""Every fault Körpü reports, with a stable code.

One root, :class:`KorpuError`.  Each class fixes a ``code`` (X-Road style, CamelCase), an ``http_status`` and a
default ``origin``; the fault code a caller sees is ``origin + "." + code`` (``Client.InvalidIdentifier``,
``Server.ClientProxy.OutdatedGlobalConf``).  Codes are part of the public interface: never rename one, and list
new ones in ``docs/errors.md``.  Messages are for people and may change; they never contain stack traces,
file paths of the server, SQL or key material.

::

    KorpuError                              Server.InternalError            500
    ├── ClientError                         Client.BadRequest               400
    │   ├── InvalidIdentifier               Client.InvalidIdentifier        400
    │   ├── InvalidRequest                  Client.InvalidRequest           400
    │   ├── InvalidCsr                      Client.InvalidCsr               400
    │   ├── NotFound                        Client.NotFound                 404
    │   ├── Conflict                        Client.Conflict                 409
    │   │   ├── DuplicateRegistration       Client.DuplicateRegistration    409
    │   │   └── InvalidState                Client.InvalidState             409
    │   ├── MissingApiKey                   Client.MissingApiKey            401
    │   ├── InvalidApiKey                   Client.InvalidApiKey            401
    │   ├── InsufficientRole                Client.InsufficientRole         403
    │   ├── MethodNotAllowed                Client.MethodNotAllowed         405
    │   ├── PayloadTooLarge                 Client.PayloadTooLarge          413
    │   ├── InvalidContentType              Client.InvalidContentType       400
    │   ├── MimeParsingFailed               Client.MimeParsingFailed        400
    │   ├── MissingSoap                     Client.MissingSoap              400
    │   ├── InvalidXml                      Client.InvalidXml               400
    │   ├── InvalidSoap                     Client.InvalidSoap              400
    │   ├── InvalidBody                     Client.InvalidBody              400
    │   ├── MissingHeaderField              Client.MissingHeaderField       400
    │   ├── DuplicateHeaderField            Client.DuplicateHeaderField     400
    │   ├── InvalidProtocolVersion          Client.InvalidProtocolVersion   400
    │   └── InvalidPath                     Client.InvalidPath              400
    ├── ConfigError                         Server.InvalidConfiguration     500
    ├── TokenError                          Server.TokenError               500
    │   ├── WrongPin                        Server.WrongPin                 403
    │   ├── TokenNotInitialized             Server.TokenNotInitialized      500
    │   └── KeyNotFound                     Server.KeyNotFound              500
    ├── PkiError                            Server.PkiError                 500
    │   ├── CertificateInvalid              Server.InvalidCertificate       500
    │   ├── CertificateRevoked              Server.CertificateRevoked       500
    │   └── SslAuthenticationFailed         Server.SslAuthenticationFailed  500
    ├── GlobalConfError                     Server.GlobalConfError          500
    │   ├── GlobalConfMalformed             Server.MalformedGlobalConf      500
    │   ├── GlobalConfSignatureInvalid      Server.InvalidGlobalConfSignature 500
    │   ├── GlobalConfExpired               Server.OutdatedGlobalConf       500
    │   └── GlobalConfUnavailable           Server.GlobalConfUnavailable    500
    ├── AnchorInvalid                       Server.InvalidAnchor            500
    ├── InconsistentResponse                Server.InconsistentResponse     500
    ├── SignatureInvalid                    Server.InvalidSignatureValue    500
    ├── InvalidTransportMessage             Server.InvalidMessage           500
    ├── AccessDenied                        Server.AccessDenied             403
    ├── ReplayedMessage                     Server.ReplayedMessage          500
    ├── LoggingFailed                       Server.LoggingFailed            500
    ├── TimestampingFailed                  Server.TimestampingFailed       500
    ├── LogVerificationFailed               Server.LogVerificationFailed    500
    ├── UpstreamUnavailable                 Server.NetworkError             502
    └── DatabaseError                       Server.DatabaseError            500

Use :func:`render_json` (REST and management APIs) or :func:`render_soap_fault` to turn an error into a response
body; nothing else should format errors for callers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, TypeVar

__all__ = [
    "AccessDenied",
    "AnchorInvalid",
    "CertificateInvalid",
    "CertificateRevoked",
    "ClientError",
    "ConfigError",
    "Conflict",
    "DatabaseError",
    "DuplicateHeaderField",
    "DuplicateRegistration",
    "GlobalConfError",
    "GlobalConfExpired",
    "GlobalConfMalformed",
    "GlobalConfSignatureInvalid",
    "GlobalConfUnavailable",
    "InconsistentResponse",
    "InsufficientRole",
    "InvalidApiKey",
    "InvalidBody",
    "InvalidContentType",
    "InvalidCsr",
    "InvalidIdentifier",
    "InvalidPath",
    "InvalidProtocolVersion",
    "InvalidRequest",
    "InvalidSoap",
    "InvalidState",
    "InvalidTransportMessage",
    "InvalidXml",
    "KeyNotFound",
    "KorpuError",
    "LogVerificationFailed",
    "LoggingFailed",
    "MethodNotAllowed",
    "MimeParsingFailed",
    "MissingApiKey",
    "MissingHeaderField",
    "MissingSoap",
    "NotFound",
    "PayloadTooLarge",
    "PkiError",
    "ReplayedMessage",
    "SignatureInvalid",
    "SslAuthenticationFailed",
    "TimestampingFailed",
    "TokenError",
    "TokenNotInitialized",
    "UpstreamUnavailable",
    "WrongPin",
    "fail_closed",
    "render_json",
]


class KorpuError(Exception):
    """Root of every Körpü fault.

    ``origin`` may be overridden per instance, because the same condition (an expired global configuration, say)
    is reported as ``Server.ClientProxy…`` on the consumer's side and ``Server.ServerProxy…`` on the provider's.
    """

    code: ClassVar[str] = "InternalError"
    http_status: ClassVar[int] = 500
    origin_default: ClassVar[str] = "Server"

    def __init__(self, message: str, *, origin: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.origin = origin or self.origin_default
        self.detail = detail

    @property
    def fault_code(self) -> str:
        """The full fault code: origin, a dot, and the stable code."""
        return f"{self.origin}.{self.code}"

    def to_dict(self) -> dict[str, Any]:
        """The error as X-Road's REST error body: ``{type, message, detail}``."""
        return {"type": self.fault_code, "message": self.message, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.fault_code}: {self.message}"


# Caller's mistakes ---------------------------------------------------------------------------------------------


class ClientError(KorpuError):
    """The caller sent something wrong; retrying the same request will fail the same way."""

    code = "BadRequest"
    http_status = 400
    origin_default = "Client"


class InvalidIdentifier(ClientError):
    """An X-Road identifier is malformed or of the wrong kind."""

    code = "InvalidIdentifier"


class InvalidRequest(ClientError):
    """A request body or parameter fails validation."""

    code = "InvalidRequest"


class InvalidCsr(ClientError):
    """A certificate signing request cannot be parsed, is not self-signed correctly, or has a weak key."""

    code = "InvalidCsr"


class NotFound(ClientError):
    """The named object does not exist."""

    code = "NotFound"
    http_status = 404


class Conflict(ClientError):
    """The request conflicts with the current state."""

    code = "Conflict"
    http_status = 409


class DuplicateRegistration(Conflict):
    """The object is already registered, or a registration request for it is pending."""

    code = "DuplicateRegistration"


class InvalidState(Conflict):
    """The object is not in a state that allows this action (approving a rejected request, say)."""

    code = "InvalidState"


class MissingApiKey(ClientError):
    """The management API was called without an API key."""

    code = "MissingApiKey"
    http_status = 401


class InvalidApiKey(ClientError):
    """The API key is unknown or revoked."""

    code = "InvalidApiKey"
    http_status = 401


class InsufficientRole(ClientError):
    """The API key's roles do not allow this operation."""

    code = "InsufficientRole"
    http_status = 403


class MethodNotAllowed(ClientError):
    """The endpoint exists but does not support this HTTP method."""

    code = "MethodNotAllowed"
    http_status = 405


class PayloadTooLarge(ClientError):
    """The request body exceeds the size the endpoint accepts."""

    code = "PayloadTooLarge"
    http_status = 413


# Message protocol faults (SOAP 4.0 / REST r1).  Names follow X-Road's ErrorCodes vocabulary where it has one.


class InvalidContentType(ClientError):
    """The message's content type is not one the protocol accepts (or is malformed)."""

    code = "InvalidContentType"


class MimeParsingFailed(ClientError):
    """A multipart (SOAP with attachments) message is not well-formed MIME."""

    code = "MimeParsingFailed"


class MissingSoap(ClientError):
    """A multipart message has no part holding the SOAP envelope."""

    code = "MissingSoap"


class InvalidXml(ClientError):
    """A message is not well-formed XML, or uses a DTD, entities or excessive nesting."""

    code = "InvalidXml"


class InvalidSoap(ClientError):
    """Well-formed XML that is not a valid SOAP 1.1 envelope for the X-Road message protocol."""

    code = "InvalidSoap"


class InvalidBody(ClientError):
    """The SOAP Body is empty or its element does not match the service code in the header."""

    code = "InvalidBody"


class MissingHeaderField(ClientError):
    """A required X-Road header field (client, service, id, protocolVersion, X-Road-Client) is missing."""

    code = "MissingHeaderField"


class DuplicateHeaderField(ClientError):
    """An X-Road header field appears more than once."""

    code = "DuplicateHeaderField"


class InvalidProtocolVersion(ClientError):
    """The message names a protocol version other than SOAP ``4.0`` or REST ``r1``."""

    code = "InvalidProtocolVersion"


class InvalidPath(ClientError):
    """A REST path uses encoded slashes, dot segments, control characters or bad percent-encoding."""

    code = "InvalidPath"


# Server-side conditions ----------------------------------------------------------------------------------------


class ConfigError(KorpuError):
    """A configuration file is missing, unreadable or invalid; the message names the file and key."""

    code = "InvalidConfiguration"


class TokenError(KorpuError):
    """The software token (key store) cannot do what was asked."""

    code = "TokenError"


class WrongPin(TokenError):
    """The PIN does not open the token."""

    code = "WrongPin"
    http_status = 403


class TokenNotInitialized(TokenError):
    """The token directory has not been initialised."""

    code = "TokenNotInitialized"


class KeyNotFound(TokenError):
    """No key with that label is in the token."""

    code = "KeyNotFound"


class PkiError(KorpuError):
    """A certificate, OCSP or timestamp operation failed."""

    code = "PkiError"


class CertificateInvalid(PkiError):
    """A certificate does not chain to an approved CA, is outside its validity, or has the wrong profile."""

    code = "InvalidCertificate"


class CertificateRevoked(PkiError):
    """A certificate has been revoked."""

    code = "CertificateRevoked"


class SslAuthenticationFailed(PkiError):
    """A TLS peer is not the security server global configuration lists for it (X-Road's code)."""

    code = "SslAuthenticationFailed"


class GlobalConfError(KorpuError):
    """Global configuration cannot be used."""

    code = "GlobalConfError"


class GlobalConfMalformed(GlobalConfError):
    """A downloaded global configuration does not parse or does not validate against its schema."""

    code = "MalformedGlobalConf"


class GlobalConfSignatureInvalid(GlobalConfError):
    """A global configuration's signature does not verify against the configuration anchor."""

    code = "InvalidGlobalConfSignature"


class GlobalConfExpired(GlobalConfError):
    """The newest valid global configuration has expired; no traffic may pass until a fresh one arrives."""

    code = "OutdatedGlobalConf"


class GlobalConfUnavailable(GlobalConfError):
    """No valid global configuration has ever been obtained."""

    code = "GlobalConfUnavailable"


class AnchorInvalid(KorpuError):
    """The configuration anchor file cannot be read or is malformed."""

    code = "InvalidAnchor"


class InconsistentResponse(KorpuError):
    """A response does not echo its request's header fields, or its request hash does not match the request.

    Raised with the origin of the side that noticed (``Server.ServerProxy`` for a provider's answer,
    ``Server.ClientProxy`` for the provider security server's).
    """

    code = "InconsistentResponse"


class SignatureInvalid(KorpuError):
    """A message's signature is malformed, does not cover exactly its parts, or does not verify (X-Road's code).

    Raised with the origin of the side that verified (``Server.ServerProxy`` for a request,
    ``Server.ClientProxy`` for a response).
    """

    code = "InvalidSignatureValue"


class InvalidTransportMessage(KorpuError):
    """A message between security servers breaks the transport format (manifest, part lengths, framing)."""

    code = "InvalidMessage"


class AccessDenied(KorpuError):
    """The policy engine denied the request: no access right lets this client call this service.

    Raised by the provider's security server with origin ``Server.ServerProxy`` (X-Road's
    ``Server.ServerProxy.AccessDenied``).  The message says only which service was refused; the decision's reason
    and rule go to the message log, because they reveal the provider's policy.
    """

    code = "AccessDenied"
    http_status = 403


class UpstreamUnavailable(KorpuError):
    """A network peer (central server, OCSP responder, TSA, another security server) could not be reached."""

    code = "NetworkError"
    http_status = 502


class DatabaseError(KorpuError):
    """The database failed; the transaction was rolled back."""

    code = "DatabaseError"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def fail_closed(fault: type[KorpuError], message: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function so that any exception it raises but a :class:`KorpuError` becomes ``fault(message)``.

    For checks of what comes from outside (timestamp tokens, OCSP responses): the parsing libraries raise whatever
    they raise for hostile or merely unusual input (asn1crypto an ``AttributeError``, cryptography
    ``UnsupportedAlgorithm``), and the caller must get its stable fault — and try the next TSA or responder, or
    report the evidence as failing — never a traceback.
    """

    def wrap(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except KorpuError:
                raise
            except Exception as exc:
                raise fault(message) from exc

        return checked

    return wrap


def render_json(error: KorpuError, correlation_id: str | None = None) -> bytes:
    """Render ``error`` as X-Road's REST error JSON body.

    ``detail`` carries the correlation id when the error has no detail of its own, so an operator can find the
    diagnostic log entry without the caller seeing internals.
    """
    body = error.to_dict()
    if body["detail"] is None:
        body["detail"] = correlation_id
    return json.dumps(body, ensure_ascii=False).encode()


class ReplayedMessage(KorpuError):
    """A message was signed outside the accepted time window, or its signature was already seen (a replay).

    Raised by the receiving security server (``Server.ServerProxy.ReplayedMessage`` for requests,
    ``Server.ClientProxy.ReplayedMessage`` for responses).
    """

    code = "ReplayedMessage"


class LoggingFailed(KorpuError):
    """The message log could not write the record, so the message was not passed on (nothing unlogged moves)."""

    code = "LoggingFailed"


class TimestampingFailed(KorpuError):
    """The message log's records have waited for a timestamp longer than the grace period; traffic is refused."""

    code = "TimestampingFailed"


class LogVerificationFailed(KorpuError):
    """Evidence does not verify: a record, body, signature, proof or timestamp was changed, or is missing."""

    code = "LogVerificationFailed"
