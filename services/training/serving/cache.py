"""The models Predict has loaded, kept in an LRU cache keyed by (name, version).

A version's model never changes, so it is loaded once; concurrent calls for one
version wait for the one load. Blocking: TrainerService calls it in threads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import mlflow
from mlflow.exceptions import MlflowException

from runtime.errors import failed_precondition
from services.training import reasons
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.row_scoring import RowScorer
from services.training.serving.catalog import mlflow_errors

logger = logging.getLogger("modelyard.trainer.catalog")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    booster: lgb.Booster
    spec: FeatureSpec
    scorer: RowScorer  # Predict's fast path, its per-column decisions made once


class ModelCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def holds(self, name: str, version: int) -> bool:
        with self._cache_lock:
            return (name, version) in self._cache

    def loaded(self, name: str, version: int) -> LoadedModel | None:
        """The model if it is loaded already (never blocks on a load: Predict calls it
        on the event loop, saving a thread hop per call)."""
        key = (name, version)
        with self._cache_lock:
            model = self._cache.get(key)
            if model is not None:
                self._cache.move_to_end(key)
            return model

    def load(self, name: str, version: int) -> LoadedModel:
        """The model behind a version, loaded once (LRU cache)."""
        key = (name, version)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # concurrent calls for one version load it once
            with self._cache_lock:
                if key in self._cache:
                    return self._cache[key]
            loaded = self._load(name, version)
            with self._cache_lock:
                self._cache[key] = loaded
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
                self._loading.pop(key, None)
        return loaded

    def _load(self, name: str, version: int) -> LoadedModel:
        with mlflow_errors(name):
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        try:
            inner: Any = model.unwrap_python_model()
            booster, spec = inner.booster, inner.spec
        except (AttributeError, MlflowException) as error:
            raise failed_precondition(
                reasons.MODEL_NOT_SUPPORTED,
                f"{name} version {version} was not trained by modelyard; it cannot be served here",
                model_name=name,
                version=str(version),
            ) from error
        logger.info("model loaded for predictions", extra={"model": name, "version": version})
        return LoadedModel(
            name=name,
            version=version,
            booster=booster,
            spec=spec,
            scorer=RowScorer(booster, spec),
        )
