"""Bearer-token authentication of REST clients.

Two kinds of token are accepted:
- the configured ones, `MODELYARD_GATEWAY_API_TOKENS` (several at once, to rotate
  without downtime): each is an admin token of the `default` project. With none
  configured and dev mode off, one is generated once into `<state_dir>/api-token`;
  only the file's path is logged;
- a project's API token (`myk_<id>_<secret>`), checked with the Jobs service
  (AccessService.AuthenticateApiToken) and then trusted for
  `MODELYARD_GATEWAY_API_TOKEN_CACHE_SECONDS` (so a revoke reaches the gateway
  within that time).

The caller found is forwarded to the services with every call (the service token
plus `x-modelyard-project` and `x-modelyard-role`: runtime/access.py), which check
the role and scope the answer to the project.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from gateway import reasons
from gateway.errors import GatewayError
from gateway.settings import GatewaySettings
from runtime import access
from runtime.access import Caller, Role
from runtime.errors import error_reason
from runtime.secrets import load_or_create_secret, tokens_equal

logger = logging.getLogger("modelyard.gateway.auth")

API_TOKEN_FILE = "api-token"
# The configured tokens act as the operator: an admin of `default`.
OPERATOR = Caller(access.DEFAULT_PROJECT, Role.ADMIN)
# At most this many project tokens are remembered; past it the cache starts afresh.
MAX_CACHED_TOKENS = 10_000

# Asks the Jobs service who a project API token is: (project, role number, expire epoch).
TokenLookup = Callable[[str], Awaitable[tuple[str, int, float]]]


class Authenticator:
    def __init__(self, tokens: list[str], dev_mode: bool, cache_seconds: float = 30.0) -> None:
        self._tokens = tuple(tokens)
        self.dev_mode = dev_mode
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Caller, float]] = {}
        self._lookup: TokenLookup | None = None

    def use_lookup(self, lookup: TokenLookup) -> None:
        """How project API tokens are checked (set once the backends' channels are open)."""
        self._lookup = lookup

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Authenticator:
        if settings.dev_mode:
            logger.warning(
                "DEV MODE: authentication is OFF; every client reaching this port can use "
                "the whole API. Never run dev mode where anyone else can connect."
            )
            return cls([], dev_mode=True, cache_seconds=settings.api_token_cache_seconds)
        tokens = [token.get_secret_value() for token in settings.api_tokens]
        if not tokens:
            path = settings.state_dir / API_TOKEN_FILE
            tokens = [load_or_create_secret(path)]
            logger.warning(
                "no API token configured (MODELYARD_GATEWAY_API_TOKENS); clients must send "
                "the generated one, kept in the file given here",
                extra={"api_token_file": str(path.resolve())},
            )
        return cls(tokens, dev_mode=False, cache_seconds=settings.api_token_cache_seconds)

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller `authorization` names (None in dev mode: the services then act for
        `default` as admin); GatewayError(401) unless it is `Bearer <a valid token>`."""
        if self.dev_mode:
            return None
        if not authorization:
            raise _unauthenticated(
                reasons.API_TOKEN_MISSING, "this API needs 'Authorization: Bearer <token>'"
            )
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise _unauthenticated(
                reasons.API_TOKEN_MISSING, "the Authorization header must be 'Bearer <token>'"
            )
        # Compare with every token, always: the time taken says nothing of which matched.
        matched = False
        for token in self._tokens:
            matched |= tokens_equal(presented, token)
        if matched:
            return OPERATOR
        if access.parse_api_token(presented) is not None and self._lookup is not None:
            return await self._project_caller(presented, self._lookup)
        raise _invalid_token(reasons.API_TOKEN_INVALID, "the bearer token is not valid")

    async def _project_caller(self, token: str, lookup: TokenLookup) -> Caller:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            project, role, expire_epoch = await lookup(token)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                reason = error_reason(error)
                if reason == reasons.API_TOKEN_EXPIRED:
                    raise _invalid_token(reason, "the API token has expired") from None
                raise _invalid_token(
                    reasons.API_TOKEN_INVALID, "the bearer token is not valid"
                ) from None
            logger.warning("cannot check an API token: %s", error.code().name)
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                reasons.BACKEND_UNAVAILABLE,
                "API tokens cannot be checked now (the Jobs service did not answer); retry",
            ) from None
        caller = Caller(project, Role(role))
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache.clear()
        # Trusted for the cache's time, never past the token's own expiry.
        self._cache[token] = (caller, min(now + self._cache_seconds, expire_epoch))
        return caller


def _invalid_token(reason: str, message: str) -> GatewayError:
    return _unauthenticated(
        reason, message, challenge='Bearer realm="modelyard", error="invalid_token"'
    )


def _unauthenticated(
    reason: str, message: str, challenge: str = 'Bearer realm="modelyard"'
) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAUTHENTICATED,
        reason,
        message,
        headers={"WWW-Authenticate": challenge},
    )
