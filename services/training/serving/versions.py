"""Which version a Predict means, without waiting on MLflow once it has been asked.

A version number never changes what it holds: once its model is loaded, a call
naming it needs no registry call at all. An alias (`champion`) can move: the
version it named is kept and served at once; when it is older than
`refresh_seconds` one background lookup refreshes it (the call that noticed
does not wait), so a moved alias takes effect within about `refresh_seconds`
plus one call. Only the first call for a name and alias (or an unloaded
version) waits for the registry.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from runtime.errors import ServiceError
from services.training.serving.cache import ModelCache
from services.training.serving.catalog import ModelCatalog

logger = logging.getLogger("modelyard.trainer.catalog")


class VersionResolver:
    def __init__(self, catalog: ModelCatalog, models: ModelCache, refresh_seconds: float) -> None:
        self._catalog = catalog
        self._models = models
        self._refresh_seconds = refresh_seconds
        self._aliases: dict[tuple[str, str], tuple[int, float]] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._refresher = ThreadPoolExecutor(1, thread_name_prefix="alias-refresh")

    def close(self) -> None:
        self._refresher.shutdown(wait=False, cancel_futures=True)

    def known(self, name: str, version: int | None, alias: str | None) -> int | None:
        """The version at once when no registry call is needed; None otherwise."""
        if version is not None:
            return version if self._models.holds(name, version) else None
        key = (name, alias or "")
        with self._lock:
            found = self._aliases.get(key)
            if found is None:
                return None
            number, looked_up = found
            stale = time.monotonic() - looked_up > self._refresh_seconds
            if stale and key not in self._refreshing:
                self._refreshing.add(key)
                self._refresher.submit(self._refresh, key)
        return number

    def resolve(self, name: str, version: int | None, alias: str | None) -> int:
        """Blocking: ask the registry (NOT_FOUND as the catalog says), and remember."""
        number = self._catalog.resolve_version(name, version, alias)
        if version is None:
            with self._lock:
                self._aliases[(name, alias or "")] = (number, time.monotonic())
        return number

    def _refresh(self, key: tuple[str, str]) -> None:
        name, alias = key
        try:
            self.resolve(name, None, alias)
        except ServiceError as error:  # the alias is gone, or MLflow is down: ask again next call
            logger.info("alias refresh failed", extra={"model": name, "reason": error.reason})
            with self._lock:
                self._aliases.pop(key, None)
        finally:
            with self._lock:
                self._refreshing.discard(key)
