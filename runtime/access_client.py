"""API tokens presented to a service other than Jobs: checked with the Jobs service
(AccessService.AuthenticateApiToken, over the service token) and then trusted for a
short while, so that a call does not cost a second round trip. A revoked token keeps
working on that service for at most the cache's time (the setting
`<SERVICE>_API_TOKEN_CACHE_SECONDS`); on the Jobs service, which owns the tokens, it
stops at once.
"""

from __future__ import annotations

import time

import grpc

from modelyard.access.v1 import access_service_pb2, access_service_pb2_grpc
from runtime import reasons
from runtime.access import Caller, Role
from runtime.channels import open_channel
from runtime.errors import ServiceError, error_reason
from runtime.settings import CommonSettings

# At most this many tokens are remembered; past it the cache starts afresh.
MAX_CACHED_TOKENS = 10_000


class ApiTokenChecker:
    def __init__(
        self,
        jobs_address: str,
        settings: CommonSettings,
        cache_seconds: float,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._channel = open_channel(jobs_address, settings)  # connects when first used
        self._stub = access_service_pb2_grpc.AccessServiceStub(self._channel)
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._cache: dict[str, tuple[Caller, float]] = {}

    async def caller_of(self, token: str) -> Caller:
        """The token's caller; ServiceError UNAUTHENTICATED (API_TOKEN_INVALID or
        API_TOKEN_EXPIRED) for a bad token, UNAVAILABLE when Jobs cannot tell."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            reply = await self._stub.AuthenticateApiToken(
                access_service_pb2.AuthenticateApiTokenRequest(token=token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                expired = error_reason(error) == reasons.API_TOKEN_EXPIRED
                raise ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    reasons.API_TOKEN_EXPIRED if expired else reasons.API_TOKEN_INVALID,
                    "the API token has expired" if expired else "the API token is not valid",
                ) from None
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                reasons.API_TOKEN_CHECK_UNAVAILABLE,
                "API tokens cannot be checked now (the Jobs service did not answer); retry",
            ) from None
        caller = Caller(reply.project_id, Role(reply.role))
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache.clear()
        # Trusted for the cache's time, never past the token's own expiry.
        expires = reply.expire_time.ToDatetime().timestamp()
        self._cache[token] = (caller, min(now + self._cache_seconds, expires))
        return caller

    async def close(self) -> None:
        await self._channel.close()
