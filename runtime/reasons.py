"""Reason codes raised by the runtime itself, on behalf of every service that uses
the part raising them. Each service's own `reasons` module re-exports the ones it
can answer with, and its README documents them with its other reasons."""

# Any gRPC call without a valid service token (runtime/interceptors.py): UNAUTHENTICATED.
SERVICE_TOKEN_INVALID = "SERVICE_TOKEN_INVALID"
# An unexpected exception in a handler; the message says no more (interceptors.py).
INTERNAL = "INTERNAL"
# List RPCs (runtime/pagination.py): INVALID_ARGUMENT.
PAGE_SIZE_INVALID = "PAGE_SIZE_INVALID"
PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
# Projects and API tokens (runtime/access.py, runtime/interceptors.py, the Jobs service's
# AccessService): an API token that is unknown, revoked or malformed, or past its expiry
# (UNAUTHENTICATED); a caller whose role is below what the RPC needs (PERMISSION_DENIED);
# a project id that is not one (INVALID_ARGUMENT).
API_TOKEN_INVALID = "API_TOKEN_INVALID"
API_TOKEN_EXPIRED = "API_TOKEN_EXPIRED"
ROLE_INSUFFICIENT = "ROLE_INSUFFICIENT"
PROJECT_ID_INVALID = "PROJECT_ID_INVALID"
# An API token presented to a service other than Jobs while Jobs cannot check it
# (runtime/access_client.py): UNAVAILABLE, retry.
API_TOKEN_CHECK_UNAVAILABLE = "API_TOKEN_CHECK_UNAVAILABLE"
