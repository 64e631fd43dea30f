"""The gateway's ASGI application: REST/JSON in, gRPC to the services, JSON out.

Per request: a request id, authentication (except for the probes and the
docs), the route from the table built at start, the request message from path,
query and body, one gRPC call with the client's deadline, the reply as proto3
JSON, and one JSON log line. Nothing here knows any particular RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from contextlib import AsyncExitStack
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import reasons
from gateway.auth import Authenticator
from gateway.backends import Backends
from gateway.descriptors import Comments, load_services
from gateway.docs import ASSET_PREFIX, DocsPage
from gateway.errors import ErrorResponse, GatewayError, error_response, invalid_argument
from gateway.legacy import LegacyError, LegacyErrorResponse, LegacyRoutes
from gateway.openapi import build_document, document_json, with_server
from gateway.routes import (
    HTTP_BODY,
    Match,
    MethodNotAllowed,
    Route,
    RouteKind,
    RouteNotFound,
    Router,
)
from gateway.routes import routes_of as build_routes
from gateway.settings import GatewaySettings
from gateway.streaming import (
    BackendError,
    CallOptions,
    StreamBrokenOff,
    bytes_response,
    download_response,
    events_response,
    media_type_of,
    open_stream,
    upload,
)
from gateway.transcoding import RequestBuilder, response_json
from runtime.access import Caller, forwarding_metadata
from runtime.app import App
from runtime.errors import make_status
from runtime.interceptors import REQUEST_ID_KEY
from runtime.limits import correlation_id
from runtime.logs import log_context
from runtime.metrics import LATENCY_BUCKETS, serve_metrics
from runtime.tracing import context_from_headers, tracer

logger = logging.getLogger("modelyard.gateway")
access_logger = logging.getLogger("modelyard.gateway.access")

API_TITLE = "modelyard"
API_VERSION = "v1"
JSON_MEDIA_TYPE = "application/json"
REQUEST_ID_HEADER = "x-request-id"
TIMEOUT_HEADERS = ("x-request-timeout", "request-timeout")
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Longer URLs (path and query) are refused before routing: no route takes one, and a
# log line or span name must not carry it. Past uvicorn's own parser limit (about 64 KiB)
# gateway/http_protocols.py answers instead.
MAX_URL_BYTES = 8192
# How much of a path a span name or an access-log line keeps.
LOGGED_PATH_CHARS = 512

HTTP_REQUESTS = Counter(
    "modelyard_gateway_requests",
    "HTTP requests, by RPC (or 'none' when no route matched) and HTTP status.",
    ["rpc", "status"],
)
HTTP_SECONDS = Histogram(
    "modelyard_gateway_request_seconds",
    "HTTP request latency until the response started, by RPC and HTTP status.",
    ["rpc", "status"],
    buckets=LATENCY_BUCKETS,
)


class Exchange:
    """What the access log line says about one request."""

    __slots__ = ("route", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.route: Route | None = None


class Gateway(App):
    """The ASGI application. Its lifecycle is the common one (`runtime.app.App`): uvicorn's
    lifespan events start and close it; uvicorn itself handles SIGTERM and the grace."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__()
        self.settings = settings
        self.routes = build_routes(load_services())
        self.router = Router(self.routes)
        self.builders = {route: RequestBuilder(route) for route in self.routes}
        self.backends = Backends(settings, self.routes)
        self.auth = Authenticator.from_settings(settings)
        self.legacy = (
            LegacyRoutes(
                {route.grpc_path: route for route in self.routes},
                self.backends.stub,
                settings.upload_chunk_bytes,
                settings.max_body_bytes,
            )
            if settings.legacy_routes
            else None
        )
        self.openapi = build_document(
            self.routes,
            Comments.load(),
            title=API_TITLE,
            version=API_VERSION,
            legacy_routes=settings.legacy_routes,
        )
        # One serialised document per server URL it was asked for (a handful in practice:
        # every name the gateway is reached by); bounded, since Host is the client's word.
        self._openapi_json = functools.lru_cache(maxsize=16)(self._openapi_for)
        self.docs = DocsPage()
        self._app: ASGIApp = self._asgi
        if settings.cors_allowed_origins:
            self._app = CORSMiddleware(
                self._asgi,
                allow_origins=settings.cors_allowed_origins,
                allow_methods=sorted({route.http_method for route in self.routes}),
                allow_headers=["authorization", "content-type", *TIMEOUT_HEADERS, "x-request-id"],
                expose_headers=["x-request-id", "content-disposition"],
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self, stack: AsyncExitStack) -> None:
        serve_metrics(self.settings.metrics_address)
        await self.backends.open()
        stack.push_async_callback(self.backends.close)
        self.auth.use_lookup(self.backends.authenticate_api_token)
        logger.info(
            "gateway ready",
            extra={
                "routes": len(self.routes),
                "backends": self.settings.backend_addresses(),
                "auth": "off (dev mode)" if self.auth.dev_mode else "bearer token",
                "cors_origins": self.settings.cors_allowed_origins,
            },
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as error:
                    logger.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests -------------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: returning without accepting refuses them.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        # The same rule as every gRPC server's (runtime.limits.correlation_id).
        request_id = correlation_id(request.headers.get(REQUEST_ID_HEADER))
        exchange = Exchange()
        span = tracer().start_as_current_span(
            f"{request.method} {scope['path'][:LOGGED_PATH_CHARS]}",
            context=context_from_headers(request.headers),
            kind=SpanKind.SERVER,
        )
        with log_context(request_id=request_id), span:
            try:
                response = await self._respond(request, request_id, exchange)
            except GatewayError as error:
                response = error.response()
            except BackendError as error:
                response = error_response(error.status)
            except Exception:
                logger.exception("unhandled error")
                response = error_response(
                    make_status(grpc.StatusCode.INTERNAL, reasons.INTERNAL, "internal error")
                )
            response.headers[REQUEST_ID_HEADER] = request_id
            if response.status_code >= 400:
                await _drain_unread_body(request)
            # A stream that broke off was logged where it happened; the client sees it cut.
            with contextlib.suppress(StreamBrokenOff):
                await response(scope, receive, send)
            self._log(request, response, exchange)

    async def _respond(self, request: Request, request_id: str, exchange: Exchange) -> Response:
        path: str = request.scope["path"]
        url_bytes = len(request.scope["raw_path"]) + len(request.scope["query_string"])
        if url_bytes > MAX_URL_BYTES:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                reasons.URL_TOO_LONG,
                f"the URL is longer than {MAX_URL_BYTES} bytes",
                http_status=414,
                metadata={"limit_bytes": str(MAX_URL_BYTES)},
            )
        if path in PROBE_PATHS or path == "/openapi.json" or path.startswith("/docs"):
            return await self._open_endpoint(request, path)
        if self.legacy is not None and self.legacy.serves(path):
            return await self._legacy(self.legacy, request, request_id, exchange)
        caller = await self.auth.authenticate(request.headers.get("authorization"))
        match = self._match(request)
        exchange.route = match.route
        return await self._call(request, match, _call_metadata(request_id, caller))

    async def _legacy(
        self, legacy: LegacyRoutes, request: Request, request_id: str, exchange: Exchange
    ) -> Response:
        """The predecessor's routes: the same token and calls, its error shape."""
        route = legacy.route_of(request.scope["path"])
        exchange.route = route
        try:
            caller = await self.auth.authenticate(request.headers.get("authorization"))
            options = CallOptions(
                timeout=self._timeout(request, route),
                metadata=_call_metadata(request_id, caller),
            )
            return await legacy.respond(request, options)
        except GatewayError as error:
            return LegacyError.of_status(error.status, error.headers).response()
        except LegacyError as error:
            return error.response()

    def _match(self, request: Request) -> Match:
        raw_path = request.scope.get("raw_path")
        path: str = request.scope["path"]
        try:
            return self.router.match(
                request.method, raw_path.decode("latin-1") if raw_path else path
            )
        except RouteNotFound:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                reasons.ROUTE_NOT_FOUND,
                f"no route {request.method} {path}; see /openapi.json",
            ) from None
        except MethodNotAllowed as error:
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                reasons.METHOD_NOT_ALLOWED,
                f"{path} does not take {request.method}; it takes {', '.join(error.allowed)}",
                http_status=405,
                headers={"Allow": ", ".join(error.allowed)},
            ) from None

    async def _call(
        self, request: Request, match: Match, metadata: tuple[tuple[str, str], ...]
    ) -> Response:
        """The backend call of the route, and the response made of its answer."""
        route = match.route
        options = CallOptions(timeout=self._timeout(request, route), metadata=metadata)
        stub = self.backends.stub(route)
        if route.kind is RouteKind.UPLOAD:
            reply = await upload(route, stub, request, options, self.settings.upload_chunk_bytes)
            return self._reply(route, reply)
        body = await self._read_body(request) if route.body else None
        query = request.query_params.multi_items() if request.scope["query_string"] else []
        message = self.builders[route].build(match.values, query, body)
        if route.kind is RouteKind.UNARY:
            try:
                reply = await stub(message, timeout=options.timeout, metadata=options.metadata)
            except grpc.aio.AioRpcError as error:
                raise BackendError(error, route) from error
            return self._reply(route, reply)
        call, first = await open_stream(route, stub, message, options)
        if route.kind is RouteKind.DOWNLOAD:
            return download_response(route, call, first, match.values)
        if route.kind is RouteKind.BYTES_STREAM:
            return bytes_response(route, call, first)
        return events_response(route, call, first, self.settings.sse_keepalive_seconds)

    def _reply(self, route: Route, reply: Message) -> Response:
        if route.method.output_type.full_name == HTTP_BODY:
            content_type = getattr(reply, "content_type", "") or "application/octet-stream"
            return Response(getattr(reply, "data", b""), headers={"content-type": content_type})
        return Response(response_json(route, reply), media_type=JSON_MEDIA_TYPE)

    def _timeout(self, request: Request, route: Route) -> float:
        """The call's deadline in seconds: the client's when it sent one, capped."""
        settings = self.settings
        if route.kind is RouteKind.UNARY:
            default, cap = settings.default_timeout_seconds, settings.max_timeout_seconds
        else:
            default, cap = settings.stream_timeout_seconds, settings.stream_timeout_seconds
        headers = request.headers
        raw = next((headers[name] for name in TIMEOUT_HEADERS if name in headers), None)
        if raw is None:
            return min(default, cap)
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise invalid_argument(
                reasons.REQUEST_TIMEOUT_INVALID,
                "X-Request-Timeout must be a positive number of seconds",
                value=raw[:64],
            )
        return min(seconds, cap)

    async def _read_body(self, request: Request) -> bytes:
        media_type = media_type_of(request.headers.get("content-type"))
        if media_type and media_type != JSON_MEDIA_TYPE and not media_type.endswith("+json"):
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                reasons.UNSUPPORTED_MEDIA_TYPE,
                f"the request body must be application/json, not {media_type}",
                http_status=415,
                metadata={"content_type": media_type},
            )
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _body_too_large(limit)
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise _body_too_large(limit)
        return bytes(body)

    async def _open_endpoint(self, request: Request, path: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                reasons.METHOD_NOT_ALLOWED,
                f"{path} takes GET",
                http_status=405,
                headers={"Allow": "GET"},
            )
        if path == "/healthz":
            return Response(b'{"status":"ok"}', media_type=JSON_MEDIA_TYPE)
        if path == "/readyz":
            return await self._readiness()
        if path == "/openapi.json":
            server_url = (self.settings.public_url or str(request.base_url)).rstrip("/")
            return Response(self._openapi_json(server_url), media_type=JSON_MEDIA_TYPE)
        if path == "/docs":
            return self.docs.page()
        asset = self.docs.asset(path) if path.startswith(ASSET_PREFIX) else None
        if asset is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, reasons.ROUTE_NOT_FOUND, f"no route {path}"
            )
        return asset

    def _openapi_for(self, server_url: str) -> bytes:
        return document_json(with_server(self.openapi, server_url))

    async def _readiness(self) -> Response:
        backends = await self.backends.readiness()
        ready = all(status == "SERVING" for status in backends.values())
        document = {"status": "ok" if ready else "unavailable", "backends": backends}
        return Response(
            json.dumps(document).encode(),
            status_code=200 if ready else 503,
            media_type=JSON_MEDIA_TYPE,
        )

    def _log(self, request: Request, response: Response, exchange: Exchange) -> None:
        path: str = request.scope["path"]
        rpc = exchange.route.grpc_path if exchange.route is not None else "none"
        status = str(response.status_code)
        HTTP_REQUESTS.labels(rpc, status).inc()
        HTTP_SECONDS.labels(rpc, status).observe(time.perf_counter() - exchange.started)
        span = trace.get_current_span()
        span.set_attribute("http.response.status_code", response.status_code)
        if exchange.route is not None:
            span.update_name(f"{request.method} {exchange.route.grpc_path}")
        level = logging.DEBUG if path in PROBE_PATHS else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        route = exchange.route
        extra: dict[str, Any] = {
            "method": request.method,
            "path": path[:LOGGED_PATH_CHARS],
            "status": response.status_code,
            "elapsed_ms": round((time.perf_counter() - exchange.started) * 1000, 2),
        }
        if route is not None:
            extra["rpc"] = route.grpc_path
        if isinstance(response, ErrorResponse | LegacyErrorResponse):
            extra["reason"] = response.reason
        access_logger.log(
            level,
            "%s %s %s",
            request.method,
            path[:LOGGED_PATH_CHARS],
            response.status_code,
            extra=extra,
        )


def _body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.REQUEST_BODY_TOO_LARGE,
        f"the request body is larger than {limit} bytes",
        http_status=413,
        metadata={"limit_bytes": str(limit)},
    )


def _call_metadata(request_id: str, caller: Caller | None) -> tuple[tuple[str, str], ...]:
    """The request id, and the client's project and role for the services to enforce."""
    forwarded = forwarding_metadata(caller) if caller is not None else ()
    return ((REQUEST_ID_KEY, request_id), *forwarded)


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    return Gateway(settings or GatewaySettings())


# Bounds of the body read (and dropped) before an early error answer.
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_MAX_SECONDS = 15.0


async def _drain_unread_body(request: Request) -> None:
    """Read what the client still sends of a body nobody read, before answering an error.

    Clients that send the whole body before reading the answer (urllib, requests with
    a file) see the connection reset, not the error, when the server answers and
    closes while they are still sending (an upload refused for its token, say).
    Bounded in bytes and time; a body already read (even in part) is left alone.
    """
    if getattr(request, "_stream_consumed", True):
        return
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_MAX_SECONDS):
            async for piece in request.stream():
                drained += len(piece)
                if drained > DRAIN_MAX_BYTES:
                    break
