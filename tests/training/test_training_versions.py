"""serving/versions.py: Predict's version lookup waits on the registry only the first time
(a unit test of the resolver's own logic, with a stand-in catalog)."""

from __future__ import annotations

import time
from typing import Any

from runtime.errors import not_found
from services.training.serving.cache import ModelCache
from services.training.serving.versions import VersionResolver


class Catalog:
    """Answers what the registry would: the alias's current version, counting lookups."""

    def __init__(self) -> None:
        self.champion = 1
        self.lookups = 0

    def resolve_version(self, name: str, version: int | None, alias: str | None) -> int:
        self.lookups += 1
        if self.champion == 0:
            raise not_found("MODEL_VERSION_NOT_FOUND", "no champion")
        return version if version is not None else self.champion


def wait_for(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_an_alias_is_served_at_once_and_refreshed_in_the_background() -> None:
    catalog = Catalog()
    resolver = VersionResolver(catalog, ModelCache(2), refresh_seconds=0.2)  # type: ignore[arg-type]
    try:
        assert resolver.known("m", None, "champion") is None  # never asked: the caller waits
        assert resolver.resolve("m", None, "champion") == 1
        catalog.champion = 2  # the alias moves
        assert resolver.known("m", None, "champion") == 1  # fresh: no lookup
        assert catalog.lookups == 1
        time.sleep(0.25)
        assert resolver.known("m", None, "champion") == 1  # stale: served, refreshed behind
        wait_for(lambda: resolver.known("m", None, "champion") == 2)
        assert catalog.lookups == 2
        catalog.champion = 0  # the alias is removed
        time.sleep(0.25)
        resolver.known("m", None, "champion")
        wait_for(lambda: resolver.known("m", None, "champion") is None)  # asked again next call
    finally:
        resolver.close()


def test_a_version_number_needs_no_lookup_once_its_model_is_loaded() -> None:
    catalog = Catalog()
    models = ModelCache(2)
    resolver = VersionResolver(catalog, models, refresh_seconds=5)  # type: ignore[arg-type]
    try:
        assert resolver.known("m", 3, None) is None  # not loaded: the registry says if it exists
        models._cache[("m", 3)] = object()  # type: ignore[assignment]  # as a load leaves it
        assert resolver.known("m", 3, None) == 3
        assert catalog.lookups == 0
    finally:
        resolver.close()
