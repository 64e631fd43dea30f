"""`python -m gateway`: serve the REST gateway with uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import importlib.util

import uvicorn

from gateway.app import Gateway
from gateway.http_protocols import StatusH11Protocol, StatusHttpToolsProtocol
from gateway.settings import GatewaySettings
from runtime.logs import configure_logging
from runtime.memory import freeze_startup_objects
from runtime.tracing import configure_tracing, shutdown_tracing


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    configure_tracing("gateway", settings.otlp_endpoint)
    app = Gateway(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # The fast implementations when installed (uvicorn[standard] brings them).
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # Their answer to a request they cannot parse is a google.rpc.Status too.
        http=StatusHttpToolsProtocol
        if importlib.util.find_spec("httptools")
        else StatusH11Protocol,
        lifespan="on",
        access_log=False,  # the gateway writes its own line per request
        log_config=None,  # keep the JSON logging configured above
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    freeze_startup_objects()  # the imports and the routes: out of GC's walks (runtime/memory.py)
    try:
        uvicorn.Server(config).run()
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
