"""What every exchanged message says about itself, whatever its protocol (SOAP 4.0 or REST r1).

:class:`MessageHeader` is the protocol-independent view that the proxies, the policy engine and (later) the
message log work with; :mod:`bridge.soap` and :mod:`bridge.rest` parse their wire forms into it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.errors import InvalidRequest
from bridge.identifiers import ClientId, SecurityServerId, ServiceId, check_code

__all__ = ["MAX_HEADER_VALUE", "MessageHeader", "Protocol", "RepresentedParty", "check_header_value"]

#: Longest free-text header value (id, userId, issue) accepted.
MAX_HEADER_VALUE = 1024


class Protocol(enum.StrEnum):
    """The message protocol an information system used."""

    SOAP = "SOAP"
    REST = "REST"


@dataclass(frozen=True, slots=True)
class RepresentedParty:
    """X-Road's ``representedParty`` extension: the party on whose behalf the client acts."""

    party_code: str
    party_class: str | None = None

    def __post_init__(self) -> None:
        check_code(self.party_code, "partyCode")
        if self.party_class is not None:
            check_code(self.party_class, "partyClass")

    @classmethod
    def parse(cls, text: str) -> RepresentedParty:
        """Parse the REST header form ``[CLASS/]CODE``."""
        cls_part, sep, code = text.rpartition("/")
        return cls(code, cls_part if sep else None)

    def path(self) -> str:
        """The REST header form ``[CLASS/]CODE``."""
        return f"{self.party_class}/{self.party_code}" if self.party_class else self.party_code


def check_header_value(value: str, name: str, *, max_len: int = MAX_HEADER_VALUE) -> str:
    """Validate a free-text X-Road header value (``id``, ``userId``, ``issue``): printable, bounded."""
    if not value or len(value) > max_len:
        raise InvalidRequest(f"{name} must have 1 to {max_len} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidRequest(f"{name} contains control characters")
    return value


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The X-Road message header of a request (and, echoed, of its response).

    ``message_id`` is the ``id`` / ``X-Road-Id`` the client sent (or one the client proxy generated for REST when
    none was given); ``user_id`` identifies the end user; ``issue`` is the case or purpose the request serves.
    """

    protocol: Protocol
    client: ClientId
    service: ServiceId
    message_id: str
    user_id: str | None = None
    issue: str | None = None
    represented_party: RepresentedParty | None = None
    security_server: SecurityServerId | None = None
    protocol_version: str = "4.0"

    def __post_init__(self) -> None:
        check_header_value(self.message_id, "id")
        if self.user_id is not None:
            check_header_value(self.user_id, "userId")
        if self.issue is not None:
            check_header_value(self.issue, "issue")
