"""The `champion` alias: which version holds it, and when a new one takes it.

Strictly better on the task's primary metric wins (binary ROC AUC, multiclass
macro F1, regression RMSE), the tie-break metric deciding ties; otherwise the
champion stays. The read-compare-move happens under a `ChampionLock` so that
two jobs finishing together cannot undo each other's decision.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Protocol

from mlflow.entities.model_registry import ModelVersion

from services.training.model.targets import PrimaryMetric

CHAMPION_ALIAS = "champion"
# Model versions carry their validation metrics as tags `metric.<name>`.
METRIC_TAG_PREFIX = "metric."


class ChampionLock(Protocol):
    def hold(self, model_name: str) -> contextlib.AbstractContextManager[None]:
        """Held while the champion of `model_name` is read, compared and moved."""


class LocalChampionLock:
    """A lock per model name within one process (tests, benchmarks, one Trainer)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def hold(self, model_name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(model_name, threading.Lock())
        with lock:
            yield


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The validation metrics the Trainer tagged a model version with."""
    metrics: dict[str, float] = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            with contextlib.suppress(ValueError):
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(value)
    return metrics


def beats_champion(
    new: Mapping[str, float], champion: Mapping[str, float] | None, primary: PrimaryMetric
) -> tuple[bool, str]:
    """Whether a new version should take `champion`, and why, in words.

    Strictly better on the primary metric wins; on a tie, the tie-break metric
    decides (strictly better again); otherwise the champion stays. A champion
    without the primary metric (another task, or a version registered by hand)
    cannot be compared, so the new version takes the alias.
    """
    if champion is None:
        return True, "no champion yet"
    old = champion.get(primary.name)
    value = new[primary.name]
    if old is None or math.isnan(old):
        return True, f"the champion has no {primary.name}"
    if _better(value, old, primary.higher_is_better):
        return True, f"{primary.name} {value:.6g} beats {old:.6g}"
    if value == old and primary.tie_break and primary.tie_break in new:
        old_tie = champion.get(primary.tie_break)
        tie = new[primary.tie_break]
        if old_tie is not None and _better(tie, old_tie, primary.tie_break_higher_is_better):
            return True, f"{primary.name} ties; {primary.tie_break} {tie:.6g} beats {old_tie:.6g}"
    return False, f"{primary.name} {value:.6g} does not beat the champion's {old:.6g}"


def _better(value: float, other: float, higher_is_better: bool) -> bool:
    return value > other if higher_is_better else value < other
