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
