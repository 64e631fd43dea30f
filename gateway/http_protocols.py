"""uvicorn's HTTP protocols, answering a request they cannot parse with a google.rpc.Status.

uvicorn answers a request line or header it cannot parse (a URL past its parser's
buffer, say) by itself, as plain text. Every answer of the gateway is a Status, so
these subclasses replace that text with one (reason HTTP_REQUEST_INVALID); the app
never sees such a request.
"""

from __future__ import annotations

import grpc
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import reasons
from gateway.errors import error_response
from runtime.errors import make_status


def _status_body() -> bytes:
    status = make_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.HTTP_REQUEST_INVALID,
        "the request is not valid HTTP, or its request line or headers are too long",
    )
    return bytes(error_response(status, 400).body)


def _raw_400(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = _status_body()
    lines = [b"HTTP/1.1 400 Bad Request\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
        b"connection: close\r\n",
        b"\r\n",
        body,
    ]
    return b"".join(lines)


class StatusHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_400(self.server_state.default_headers))
        self.transport.close()


class StatusH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        # h11 refuses to send once its parser has failed: write the response directly.
        self.transport.write(_raw_400(self.server_state.default_headers))
        self.transport.close()
