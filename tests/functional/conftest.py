"""A running two-agency federation shared by the exchange tests of one module, plus a streaming backend.

ss-a belongs to a bank with client subsystems ``loans`` (granted access) and ``marketing`` (no grants); ss-b to a
ministry providing the built-in test service (REST ``hello``/``echo``, SOAP ``helloService``) and ``stream``, a
provider information system reached over HTTP that hashes uploads and streams downloads without holding them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web

from adapters.testservice import wsdl as test_service_wsdl
from security_server.config import PersonField
from security_server.sandbox import AgencySpec, Federation, ServiceSpec, free_port, start_federation
from tests.streaming import streaming_app

BANK_CLIENT = "SUBSYSTEM:AZ/COM/9900001111/loans"
#: The OpenAPI 3 description the ministry publishes for REST ``hello`` (served by the ``getOpenAPI`` metaservice).
HELLO_OPENAPI = json.dumps(
    {
        "openapi": "3.0.3",
        "info": {"title": "Körpü test service: hello", "version": "1.0.0"},
        "paths": {
            "/hello": {
                "get": {
                    "operationId": "hello",
                    "parameters": [{"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "A greeting",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["message", "client"],
                                        "properties": {
                                            "message": {"type": "string"},
                                            "client": {"type": "string"},
                                            "userId": {"type": "string", "nullable": True},
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            }
        },
    },
    indent=2,
    ensure_ascii=False,
).encode()


def agencies(stream_url: str) -> tuple[AgencySpec, ...]:
    """The federation's two agencies; ``stream_url`` is the ministry's streaming information system."""
    return (
        AgencySpec("AZ/COM/9900001111/ss-a", "Kapital Bank", clients=("loans", "marketing")),
        AgencySpec(
            "AZ/GOV/1400057421/ss-b",
            "Ministry of Digital Development",
            clients=("population",),
            services=(
                ServiceSpec(
                    "population",
                    "hello",
                    grants=((BANK_CLIENT, None, None),),
                    description=HELLO_OPENAPI,
                    # The greeting's ?name= stands in for a person identifier: "who asked about X".
                    person_fields=(PersonField("query", "name"),),
                ),
                ServiceSpec("population", "echo", grants=((BANK_CLIENT, "POST", "/echo"),)),
                ServiceSpec(
                    "population",
                    "helloService",
                    type="SOAP",
                    grants=((BANK_CLIENT, None, None),),
                    description=test_service_wsdl(),
                ),
                ServiceSpec("population", "stream", adapter=None, url=stream_url, grants=((BANK_CLIENT, None, None),)),
            ),
        ),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stream_backend() -> AsyncIterator[str]:
    """The ministry's streaming information system on loopback; yields its base URL."""
    runner = web.AppRunner(streaming_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: object, stream_backend: str) -> AsyncIterator[Federation]:
    """Central server plus ss-a (a bank, client) and ss-b (a ministry, provider) on loopback."""
    state: Path = tmp_path_factory.mktemp("federation")  # type: ignore[attr-defined]
    fed = await start_federation(state, agencies(stream_backend))
    try:
        yield fed
    finally:
        await fed.stop()
