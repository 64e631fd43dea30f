"""Bearer-token authentication of REST clients.

Tokens come from `MODELYARD_GATEWAY_API_TOKENS` (several at once, to rotate
without downtime). With none configured and dev mode off, a token is generated
once into `<state_dir>/api-token`; only the file's path is logged.
"""

from __future__ import annotations

import logging

import grpc

from gateway import reasons
from gateway.errors import GatewayError
from gateway.settings import GatewaySettings
from runtime.secrets import load_or_create_secret, tokens_equal

logger = logging.getLogger("modelyard.gateway.auth")

API_TOKEN_FILE = "api-token"


class Authenticator:
    def __init__(self, tokens: list[str], dev_mode: bool) -> None:
        self._tokens = tuple(tokens)
        self.dev_mode = dev_mode

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Authenticator:
        if settings.dev_mode:
            logger.warning(
                "DEV MODE: authentication is OFF; every client reaching this port can use "
                "the whole API. Never run dev mode where anyone else can connect."
            )
            return cls([], dev_mode=True)
        tokens = [token.get_secret_value() for token in settings.api_tokens]
        if not tokens:
            path = settings.state_dir / API_TOKEN_FILE
            tokens = [load_or_create_secret(path)]
            logger.warning(
                "no API token configured (MODELYARD_GATEWAY_API_TOKENS); clients must send "
                "the generated one, kept in the file given here",
                extra={"api_token_file": str(path.resolve())},
            )
        return cls(tokens, dev_mode=False)

    def check(self, authorization: str | None) -> None:
        """Raise GatewayError(401) unless `authorization` is `Bearer <a valid token>`."""
        if self.dev_mode:
            return
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
        if not matched:
            raise _unauthenticated(
                reasons.API_TOKEN_INVALID,
                "the bearer token is not valid",
                challenge='Bearer realm="modelyard", error="invalid_token"',
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
