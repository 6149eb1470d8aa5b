"""An e-visa system checks a person with the population register's SOAP service ``getPerson``, using zeep.

This is how any SOAP toolkit meets an X-Road service: fetch the service's WSDL with the ``getWsdl`` metaservice
through your own security server, build a client from that WSDL, point it at your security server's client proxy
and call the operation with the X-Road headers (``client``, ``service``, ``id``, ``userId``, ``protocolVersion``)
that the WSDL declares.

Usage (see examples/README.md)::

    python examples/evisa_person_check.py --proxy http://127.0.0.1:8080 --client AZ/GOV/1500000015/evisa 5ZK7P2M
    python examples/evisa_person_check.py --sandbox /tmp/korpu-sandbox/sandbox.json --server ss-mfa 5ZK7P2M

Needs zeep (``pip install zeep``).  Exit status: 0 found; 3 the service said no (a SOAP fault or X-Road
non-technical fault); 1 failure.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import re
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import zeep
import zeep.exceptions
import zeep.helpers

SERVICE = "AZ/GOV/1100000011/population/getPerson"


def identifier(path: str, object_type: str) -> dict[str, str]:
    """An X-Road identifier as zeep's header dict: ``AZ/GOV/123/sub[/service]`` → the XSD's fields."""
    parts = path.split("/")
    fields = ["xRoadInstance", "memberClass", "memberCode", "subsystemCode", "serviceCode"]
    return {"objectType": object_type, **dict(zip(fields, parts, strict=False))}


def get_wsdl(proxy: str, client: str, service: str, timeout: float = 30.0) -> bytes:
    """The service's WSDL via the pr-meta ``getWsdl`` metaservice (the WSDL is the answer's MIME attachment)."""
    c = identifier(client, "SUBSYSTEM")
    s = identifier(service, "SERVICE")
    ids = "".join(f"<iden:{k}>{escape(v)}</iden:{k}>" for k, v in list(c.items())[1:])
    sids = "".join(f"<iden:{k}>{escape(v)}</iden:{k}>" for k, v in list(s.items())[1:-1])
    envelope = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xro="http://x-road.eu/xsd/xroad.xsd" xmlns:iden="http://x-road.eu/xsd/identifiers">
  <soapenv:Header>
    <xro:client iden:objectType="SUBSYSTEM">{ids}</xro:client>
    <xro:service iden:objectType="SERVICE">{sids}<iden:serviceCode>getWsdl</iden:serviceCode></xro:service>
    <xro:id>{uuid.uuid4()}</xro:id>
    <xro:protocolVersion>4.0</xro:protocolVersion>
  </soapenv:Header>
  <soapenv:Body>
    <xro:getWsdl><xro:serviceCode>{escape(s["serviceCode"])}</xro:serviceCode></xro:getWsdl>
  </soapenv:Body>
</soapenv:Envelope>""".encode()
    request = urllib.request.Request(
        proxy.rstrip("/") + "/", data=envelope, headers={"Content-Type": "text/xml; charset=UTF-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            content_type, body = resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:  # a SOAP Fault: say which
        fault = re.search(rb"<faultstring[^>]*>(.*?)</faultstring>", err.read(), re.DOTALL)
        detail = fault.group(1).decode(errors="replace") if fault else f"HTTP {err.code}"
        raise RuntimeError(f"getWsdl failed: {err.headers.get('X-Road-Error', '')} {detail}".strip()) from None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) < 2:
        raise RuntimeError("getWsdl did not answer with the WSDL attached")
    wsdl = parts[1].get_payload(decode=True)
    assert isinstance(wsdl, bytes)
    return wsdl


def get_person(proxy: str, client: str, pin: str, *, officer: str, service: str = SERVICE) -> Any:
    """Fetch the WSDL, build a zeep client from it and call ``getPerson`` through the client proxy.

    The operation is the service code (X-Road's convention for SOAP services).
    """
    operation = service.rsplit("/", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        wsdl_file = Path(tmp) / "getPerson.wsdl"
        wsdl_file.write_bytes(get_wsdl(proxy, client, service))
        soap = zeep.Client(str(wsdl_file))
        # The binding that offers the operation; its endpoint is our own client proxy, whatever the WSDL says.
        binding = next(name for name, b in soap.wsdl.bindings.items() if operation in b._operations)
        proxy_service = soap.create_service(binding, proxy.rstrip("/") + "/")
        headers = {
            "client": identifier(client, "SUBSYSTEM"),
            "service": identifier(service, "SERVICE"),
            "id": str(uuid.uuid4()),
            "userId": officer,
            "protocolVersion": "4.0",
        }
        # The request's first element is the PIN (positional, so the example does not depend on its name).
        return getattr(proxy_service, operation)(pin, _soapheaders=headers)


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The client proxy URL and client id, from the command line or from a sandbox.json."""
    if args.sandbox is None:
        if not (args.proxy and args.client):
            sys.exit("give --proxy and --client, or --sandbox (see examples/README.md)")
        return args.proxy, args.client
    servers = json.loads(Path(args.sandbox).read_text(encoding="utf-8"))["security_servers"]
    server = servers[args.server] if args.server else next(s for s in servers.values() if s["clients"])
    return server["client_proxy"], args.client or server["clients"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pin", help="the visa applicant's PIN (FİN)")
    parser.add_argument("--proxy", help="the e-visa system's client proxy, e.g. http://127.0.0.1:8080")
    parser.add_argument("--client", help="the e-visa client subsystem, e.g. AZ/GOV/1500000015/evisa")
    parser.add_argument("--sandbox", help="read --proxy and --client from this sandbox.json instead")
    parser.add_argument("--server", help="with --sandbox: the security server code (default: the first)")
    parser.add_argument("--service", default=SERVICE, help=f"the getPerson service (default {SERVICE})")
    parser.add_argument("--officer", default="visa-officer-1", help="X-Road userId: who is asking")
    args = parser.parse_args(argv)
    proxy, client = endpoint(args)
    try:
        answer = get_person(proxy, client, args.pin, officer=args.officer, service=args.service)
    except zeep.exceptions.Fault as fault:
        print(f"{args.pin}: {fault.code}: {fault.message}", file=sys.stderr)
        return 3
    except (OSError, RuntimeError, StopIteration, zeep.exceptions.Error) as exc:
        print(f"check failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    body = zeep.helpers.serialize_object(answer.body, dict)
    if isinstance(body, dict) and body.get("faultCode"):
        # X-Road's non-technical fault: the service answered, and the answer is "no" (pr-mess Annex D.2).
        print(f"{args.pin}: {body['faultCode']}: {body.get('faultString')}", file=sys.stderr)
        return 3
    print(json.dumps(body, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
