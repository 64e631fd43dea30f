"""Python client and command line of the modelyard REST gateway."""

from modelyard_client.api import Client, ModelyardError

__all__ = ["Client", "ModelyardError"]
