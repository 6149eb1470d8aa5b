"""X-Road identifiers: members, subsystems, services, security servers and groups.

The model follows X-Road's ``identifiers.xsd`` (``http://x-road.eu/xsd/identifiers``): every identifier has an
object type and a list of hierarchical codes starting with the instance.  Three textual forms exist:

* **path form** — the codes joined with ``/``, as in REST r1 paths and the ``X-Road-Client`` header:
  ``AZ/GOV/1400057421/population``.  Which kind of identifier a path denotes depends on where it is used, so
  each class parses its own path form (:meth:`ClientId.parse`, :meth:`ServiceId.parse`, …).
* **encoded form** — the object type, a colon, then the path form: ``SUBSYSTEM:AZ/GOV/1400057421/population``.
  It is unambiguous and is what Körpü writes in logs, configuration and certificates.
* **XML form** — the ``id:`` elements of ``identifiers.xsd`` (see :func:`to_xml` / :func:`from_xml`).

Codes use X-Road's identifier character restrictions (pr-mess §2.7): no colon, semicolon, slash, backslash or
percent sign, no whitespace and no non-printable characters, 1 to 255 characters; and, because codes are path
segments in URLs, a code may not be ``.`` or ``..``.  These are enforced on every
parse and construction, so an identifier that exists as an object is always well formed.

Services are always provided by subsystems (as in X-Road 6 and later, and as REST r1 requires), so a service's
path form is ``INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]``.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from lxml import etree

from bridge.errors import InvalidIdentifier

__all__ = [
    "ID_NS",
    "ClientId",
    "GlobalGroupId",
    "LocalGroupId",
    "MemberId",
    "ObjectType",
    "SecurityServerId",
    "ServiceId",
    "SubsystemId",
    "XRoadId",
    "check_code",
    "from_xml",
    "parse_encoded",
    "to_xml",
]

#: Namespace of X-Road's identifier elements.
ID_NS = "http://x-road.eu/xsd/identifiers"
MAX_CODE_LENGTH = 255
_FORBIDDEN = frozenset(":;/\\%")


class ObjectType(enum.StrEnum):
    """X-Road's ``XRoadObjectType`` enumeration."""

    MEMBER = "MEMBER"
    SUBSYSTEM = "SUBSYSTEM"
    SERVER = "SERVER"
    GLOBALGROUP = "GLOBALGROUP"
    LOCALGROUP = "LOCALGROUP"
    SERVICE = "SERVICE"


def check_code(value: object, field: str) -> str:
    """Return ``value`` if it is a valid identifier code, else raise :class:`InvalidIdentifier`.

    ``field`` names the part (``memberCode``, …) so the error tells the caller which one is wrong.
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{field} must be a string")
    if not value:
        raise InvalidIdentifier(f"{field} must not be empty")
    if value in (".", ".."):
        # Codes appear as path segments in REST and management URLs, where "." and ".." would be normalised away.
        raise InvalidIdentifier(f"{field} must not be '.' or '..'")
    if len(value) > MAX_CODE_LENGTH:
        raise InvalidIdentifier(f"{field} is longer than {MAX_CODE_LENGTH} characters")
    for ch in value:
        if ch in _FORBIDDEN:
            raise InvalidIdentifier(f"{field} contains the forbidden character {ch!r}")
        # Categories C* (control, format, surrogate, private use, unassigned) and Z* (separators, spaces) are
        # the "non-printable" and whitespace characters that X-Road's restrictions exclude.
        if unicodedata.category(ch)[0] in "CZ":
            raise InvalidIdentifier(f"{field} contains a non-printable or whitespace character U+{ord(ch):04X}")
    return value


def _split(text: object, kind: str, counts: tuple[int, ...]) -> list[str]:
    if not isinstance(text, str):
        raise InvalidIdentifier(f"{kind} identifier must be a string")
    parts = text.split("/")
    if len(parts) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise InvalidIdentifier(f"{kind} identifier {text!r} must have {want} parts separated by '/'")
    return parts


@dataclass(frozen=True, slots=True, order=True)
class MemberId:
    """An X-Road member: ``INSTANCE/CLASS/CODE``."""

    instance: str
    member_class: str
    member_code: str

    object_type = ObjectType.MEMBER

    def __post_init__(self) -> None:
        check_code(self.instance, "xRoadInstance")
        check_code(self.member_class, "memberClass")
        check_code(self.member_code, "memberCode")

    @classmethod
    def parse(cls, text: str) -> MemberId:
        """Parse the path form ``INSTANCE/CLASS/CODE``."""
        return cls(*_split(text, "member", (3,)))

    @property
    def member(self) -> MemberId:
        """The member itself (so every client id has a ``member``)."""
        return self

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        return (self.instance, self.member_class, self.member_code)

    def path(self) -> str:
        """Path form, e.g. ``AZ/GOV/1400057421``."""
        return "/".join(self.parts())

    def encoded(self) -> str:
        """Encoded form, e.g. ``MEMBER:AZ/GOV/1400057421``."""
        return f"{self.object_type}:{self.path()}"

    def subsystem(self, code: str) -> SubsystemId:
        """The subsystem ``code`` of this member."""
        return SubsystemId(self.instance, self.member_class, self.member_code, code)

    def __str__(self) -> str:
        return self.encoded()


@dataclass(frozen=True, slots=True, order=True)
class SubsystemId:
    """A subsystem of a member: ``INSTANCE/CLASS/CODE/SUBSYSTEM``."""

    instance: str
    member_class: str
    member_code: str
    subsystem_code: str

    object_type = ObjectType.SUBSYSTEM

    def __post_init__(self) -> None:
        check_code(self.instance, "xRoadInstance")
        check_code(self.member_class, "memberClass")
        check_code(self.member_code, "memberCode")
        check_code(self.subsystem_code, "subsystemCode")

    @classmethod
    def parse(cls, text: str) -> SubsystemId:
        """Parse the path form ``INSTANCE/CLASS/CODE/SUBSYSTEM``."""
        return cls(*_split(text, "subsystem", (4,)))

    @property
    def member(self) -> MemberId:
        """The member that owns this subsystem."""
        return MemberId(self.instance, self.member_class, self.member_code)

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        return (self.instance, self.member_class, self.member_code, self.subsystem_code)

    def path(self) -> str:
        """Path form, e.g. ``AZ/GOV/1400057421/population``."""
        return "/".join(self.parts())

    def encoded(self) -> str:
        """Encoded form, e.g. ``SUBSYSTEM:AZ/GOV/1400057421/population``."""
        return f"{self.object_type}:{self.path()}"

    def service(self, code: str, version: str | None = None) -> ServiceId:
        """The service ``code`` (optionally ``version``) of this subsystem."""
        return ServiceId(self, code, version)

    def __str__(self) -> str:
        return self.encoded()


#: A client of the exchange: a member or one of its subsystems.
ClientId = MemberId | SubsystemId


def parse_client(text: str) -> ClientId:
    """Parse a client in path form: 3 parts is a member, 4 a subsystem (as in ``X-Road-Client``)."""
    parts = _split(text, "client", (3, 4))
    return MemberId(*parts) if len(parts) == 3 else SubsystemId(*parts)


@dataclass(frozen=True, slots=True, order=True)
class ServiceId:
    """A service of a subsystem: ``INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE[/VERSION]``."""

    provider: SubsystemId
    service_code: str
    service_version: str | None = None

    object_type = ObjectType.SERVICE

    def __post_init__(self) -> None:
        if not isinstance(self.provider, SubsystemId):
            raise InvalidIdentifier("a service must be provided by a subsystem")
        check_code(self.service_code, "serviceCode")
        if self.service_version is not None:
            check_code(self.service_version, "serviceVersion")

    @classmethod
    def parse(cls, text: str) -> ServiceId:
        """Parse the path form ``INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE[/VERSION]``."""
        parts = _split(text, "service", (5, 6))
        version = parts[5] if len(parts) == 6 else None
        return cls(SubsystemId(*parts[:4]), parts[4], version)

    @property
    def instance(self) -> str:
        """The X-Road instance of the provider."""
        return self.provider.instance

    @property
    def member(self) -> MemberId:
        """The member that provides the service."""
        return self.provider.member

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        tail = (self.service_code,) if self.service_version is None else (self.service_code, self.service_version)
        return self.provider.parts() + tail

    def path(self) -> str:
        """Path form, e.g. ``AZ/GOV/1400057421/population/getPerson/v1``."""
        return "/".join(self.parts())

    def encoded(self) -> str:
        """Encoded form, e.g. ``SERVICE:AZ/GOV/1400057421/population/getPerson``."""
        return f"{self.object_type}:{self.path()}"

    def without_version(self) -> ServiceId:
        """The same service with no version (access rights may be granted version-independently)."""
        return ServiceId(self.provider, self.service_code, None)

    def __str__(self) -> str:
        return self.encoded()


@dataclass(frozen=True, slots=True, order=True)
class SecurityServerId:
    """A security server of a member: ``INSTANCE/CLASS/CODE/SERVER``."""

    owner: MemberId
    server_code: str

    object_type = ObjectType.SERVER

    def __post_init__(self) -> None:
        if not isinstance(self.owner, MemberId):
            raise InvalidIdentifier("a security server must be owned by a member")
        check_code(self.server_code, "serverCode")

    @classmethod
    def parse(cls, text: str) -> SecurityServerId:
        """Parse the path form ``INSTANCE/CLASS/CODE/SERVER``."""
        parts = _split(text, "security server", (4,))
        return cls(MemberId(*parts[:3]), parts[3])

    @property
    def instance(self) -> str:
        """The X-Road instance of the owner."""
        return self.owner.instance

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        return (*self.owner.parts(), self.server_code)

    def path(self) -> str:
        """Path form, e.g. ``AZ/GOV/1400057421/ss1``."""
        return "/".join(self.parts())

    def encoded(self) -> str:
        """Encoded form, e.g. ``SERVER:AZ/GOV/1400057421/ss1``."""
        return f"{self.object_type}:{self.path()}"

    def __str__(self) -> str:
        return self.encoded()


@dataclass(frozen=True, slots=True, order=True)
class GlobalGroupId:
    """A global group defined by the central server: ``INSTANCE/GROUP``."""

    instance: str
    group_code: str

    object_type = ObjectType.GLOBALGROUP

    def __post_init__(self) -> None:
        check_code(self.instance, "xRoadInstance")
        check_code(self.group_code, "groupCode")

    @classmethod
    def parse(cls, text: str) -> GlobalGroupId:
        """Parse the path form ``INSTANCE/GROUP``."""
        return cls(*_split(text, "global group", (2,)))

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        return (self.instance, self.group_code)

    def path(self) -> str:
        """Path form, e.g. ``AZ/banks``."""
        return "/".join(self.parts())

    def encoded(self) -> str:
        """Encoded form, e.g. ``GLOBALGROUP:AZ/banks``."""
        return f"{self.object_type}:{self.path()}"

    def __str__(self) -> str:
        return self.encoded()


@dataclass(frozen=True, slots=True, order=True)
class LocalGroupId:
    """A group defined locally on one security server: just ``GROUP``."""

    group_code: str

    object_type = ObjectType.LOCALGROUP

    def __post_init__(self) -> None:
        check_code(self.group_code, "groupCode")

    @classmethod
    def parse(cls, text: str) -> LocalGroupId:
        """Parse the path form ``GROUP``."""
        return cls(*_split(text, "local group", (1,)))

    def parts(self) -> tuple[str, ...]:
        """The codes in hierarchical order."""
        return (self.group_code,)

    def path(self) -> str:
        """Path form: the group code."""
        return self.group_code

    def encoded(self) -> str:
        """Encoded form, e.g. ``LOCALGROUP:tax-officers``."""
        return f"{self.object_type}:{self.path()}"

    def __str__(self) -> str:
        return self.encoded()


#: Any X-Road identifier.
XRoadId = MemberId | SubsystemId | ServiceId | SecurityServerId | GlobalGroupId | LocalGroupId

_PATH_PARSERS: dict[str, type[MemberId | SubsystemId | ServiceId | SecurityServerId | GlobalGroupId | LocalGroupId]] = {
    ObjectType.MEMBER: MemberId,
    ObjectType.SUBSYSTEM: SubsystemId,
    ObjectType.SERVICE: ServiceId,
    ObjectType.SERVER: SecurityServerId,
    ObjectType.GLOBALGROUP: GlobalGroupId,
    ObjectType.LOCALGROUP: LocalGroupId,
}


def parse_encoded(text: str) -> XRoadId:
    """Parse the encoded form ``TYPE:path`` of any identifier."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidIdentifier(f"encoded identifier {text!r} must look like TYPE:path")
    kind, _, path = text.partition(":")
    cls = _PATH_PARSERS.get(kind)
    if cls is None:
        raise InvalidIdentifier(f"unknown identifier object type {kind!r}")
    return cls.parse(path)


# XML form ------------------------------------------------------------------------------------------------------

_XML_FIELDS = (
    "xRoadInstance",
    "memberClass",
    "memberCode",
    "subsystemCode",
    "groupCode",
    "serviceCode",
    "serviceVersion",
    "serverCode",
)


def _xml_values(ident: XRoadId) -> dict[str, str]:
    if isinstance(ident, MemberId):
        return {"xRoadInstance": ident.instance, "memberClass": ident.member_class, "memberCode": ident.member_code}
    if isinstance(ident, SubsystemId):
        return _xml_values(ident.member) | {"subsystemCode": ident.subsystem_code}
    if isinstance(ident, ServiceId):
        values = _xml_values(ident.provider) | {"serviceCode": ident.service_code}
        if ident.service_version is not None:
            values["serviceVersion"] = ident.service_version
        return values
    if isinstance(ident, SecurityServerId):
        return _xml_values(ident.owner) | {"serverCode": ident.server_code}
    if isinstance(ident, GlobalGroupId):
        return {"xRoadInstance": ident.instance, "groupCode": ident.group_code}
    return {"groupCode": ident.group_code}


def to_xml(ident: XRoadId, tag: str, nsmap: Mapping[str, str] | None = None) -> etree._Element:
    """Build the XML form of ``ident`` as an element named ``tag`` (a Clark name such as ``{ns}client``).

    Children are the ``id:`` elements of ``identifiers.xsd`` in schema order; the ``id:objectType`` attribute
    carries the type.
    """
    elem = etree.Element(tag, nsmap=nsmap)
    elem.set(f"{{{ID_NS}}}objectType", str(ident.object_type))
    values = _xml_values(ident)
    for name in _XML_FIELDS:
        if name in values:
            etree.SubElement(elem, f"{{{ID_NS}}}{name}").text = values[name]
    return elem


def from_xml(elem: etree._Element) -> XRoadId:
    """Parse the XML form of an identifier, checking that its children fit its object type exactly."""
    kind = elem.get(f"{{{ID_NS}}}objectType")
    if kind not in _PATH_PARSERS:
        raise InvalidIdentifier(f"identifier element has missing or unknown objectType {kind!r}")
    values: dict[str, str] = {}
    order: list[str] = []
    for child in elem:
        if isinstance(child, (etree._Comment, etree._ProcessingInstruction)):
            continue  # they carry no identifier data
        ns, _, local = child.tag.rpartition("}")
        if ns.lstrip("{") != ID_NS or local not in _XML_FIELDS:
            raise InvalidIdentifier(f"unexpected element {child.tag!r} in identifier")
        if local in values:
            raise InvalidIdentifier(f"element {local} appears twice in identifier")
        values[local] = (child.text or "").strip()
        order.append(local)
    if order != [f for f in _XML_FIELDS if f in values]:
        raise InvalidIdentifier("identifier elements are not in schema order")

    def take(*names: str, optional: tuple[str, ...] = ()) -> list[str | None]:
        allowed = set(names) | set(optional)
        extra = set(values) - allowed
        if extra:
            raise InvalidIdentifier(f"{kind} identifier must not contain {', '.join(sorted(extra))}")
        missing = [n for n in names if n not in values]
        if missing:
            raise InvalidIdentifier(f"{kind} identifier lacks {', '.join(missing)}")
        return [values.get(n) for n in names + optional]

    if kind == ObjectType.MEMBER:
        i, c, m = take("xRoadInstance", "memberClass", "memberCode")
        return MemberId(str(i), str(c), str(m))
    if kind == ObjectType.SUBSYSTEM:
        i, c, m, s = take("xRoadInstance", "memberClass", "memberCode", "subsystemCode")
        return SubsystemId(str(i), str(c), str(m), str(s))
    if kind == ObjectType.SERVICE:
        i, c, m, s, code, version = take(
            "xRoadInstance", "memberClass", "memberCode", "subsystemCode", "serviceCode", optional=("serviceVersion",)
        )
        return ServiceId(SubsystemId(str(i), str(c), str(m), str(s)), str(code), version)
    if kind == ObjectType.SERVER:
        i, c, m, s = take("xRoadInstance", "memberClass", "memberCode", "serverCode")
        return SecurityServerId(MemberId(str(i), str(c), str(m)), str(s))
    if kind == ObjectType.GLOBALGROUP:
        i, g = take("xRoadInstance", "groupCode")
        return GlobalGroupId(str(i), str(g))
    (g,) = take("groupCode")
    return LocalGroupId(str(g))
