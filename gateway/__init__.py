"""REST gateway: translates REST/JSON into calls to the modelyard gRPC services.

Run as `python -m gateway`. Routes come from the `google.api.http` annotations
of the contracts; the gateway holds no business logic and no database.
"""
