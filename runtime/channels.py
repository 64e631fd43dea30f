"""Client channels for calls between services.

Every call carries the service token and the current request id, and has a
deadline: the caller's own, or the settings' default when the caller gave none
(a stream gets `stream_timeout_seconds`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from runtime.interceptors import AUTHORIZATION_KEY, REQUEST_ID_KEY
from runtime.logs import current_context
from runtime.server import CHANNEL_OPTIONS
from runtime.settings import CommonSettings
from runtime.tracing import headers_with_context

DEFAULT_STREAM_TIMEOUT_SECONDS = 3600.0


class _CallDefaults:
    def __init__(self, token: str, timeout: float, stream_timeout: float) -> None:
        self._token = token
        self._timeout = timeout
        self._stream_timeout = stream_timeout

    def details(
        self, details: grpc.aio.ClientCallDetails, streaming: bool
    ) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[AUTHORIZATION_KEY] = f"Bearer {self._token}"
        request_id = current_context().get("request_id")
        if request_id and REQUEST_ID_KEY not in metadata:
            metadata[REQUEST_ID_KEY] = request_id
        for key, value in headers_with_context().items():  # traceparent, when tracing
            metadata[key] = value
        timeout = details.timeout
        if timeout is None:
            timeout = self._stream_timeout if streaming else self._timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details, streaming=False), request)


class _UnaryStream(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details, streaming=True), request)


class _StreamUnary(_CallDefaults, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(
            self.details(client_call_details, streaming=True), request_iterator
        )


class _StreamStream(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(
            self.details(client_call_details, streaming=True), request_iterator
        )


def open_channel(
    target: str,
    settings: CommonSettings,
    *,
    stream_timeout_seconds: float = DEFAULT_STREAM_TIMEOUT_SECONDS,
) -> grpc.aio.Channel:
    """A channel to another service, with TLS when the settings have a CA or certificate."""
    arguments = (
        settings.resolved_service_token(),
        settings.rpc_timeout_seconds,
        stream_timeout_seconds,
    )
    interceptors = [
        _UnaryUnary(*arguments),
        _UnaryStream(*arguments),
        _StreamUnary(*arguments),
        _StreamStream(*arguments),
    ]
    if settings.tls_ca_file or settings.tls_cert_file:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None,
            private_key=settings.tls_key_file.read_bytes() if settings.tls_key_file else None,
            certificate_chain=(
                settings.tls_cert_file.read_bytes() if settings.tls_cert_file else None
            ),
        )
        return grpc.aio.secure_channel(
            target, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
