"""A quote before training: wall time, peak memory and trials of a job, from the
dataset's profile and the costs this Trainer measured on the jobs it trained.

The cost model is deliberately simple, three measured rates and a constant:

- `seconds_per_cell_round`: boosting time per training row x feature x round;
- `seconds_per_round`: the part of a round that does not grow with the table
  (tree bookkeeping, validation, callbacks): what dominates on small tables;
- `bytes_per_cell`: the Trainer's resident memory growth per row x column read;
- `overhead_seconds`: the rest of a job (dataset read, MLflow, registry).

Every finished job updates them (an exponential moving average, weight
`LEARNING_RATE`), kept in `<work_dir>/costs.json`, so the quote follows the
machine it runs on. Before any job the defaults below apply (measured on the
2-core reference machine); `basis` in the answer says which.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from services.training.fit.search import (
    CV_FOLDS,
    CV_MAX_ROWS,
    MAX_SEARCH_ROUNDS,
    cv_affordable_cells,
    cv_repeats,
)

logger = logging.getLogger("modelyard.trainer.estimate")

LEARNING_RATE = 0.3
COSTS_FILE = "costs.json"
# Rounds an early-stopped default job keeps, as a share of its cap (typical).
DEFAULT_ROUNDS_SHARE = 0.3
# A search's trial trains this many rounds per fold on average (early stopping).
SEARCH_ROUNDS_PER_FOLD = 250
DEFAULT_BOOSTING_WORK = 1.5e9


@dataclass(frozen=True)
class Costs:
    seconds_per_cell_round: float = 4e-8
    seconds_per_round: float = 4e-4
    bytes_per_cell: float = 60.0
    overhead_seconds: float = 2.0
    base_memory_bytes: float = 450e6
    jobs_measured: int = 0


@dataclass(frozen=True)
class TableShape:
    rows: int
    features: int
    classes: int  # 1 for regression and binary (one tree a round), k for multiclass


@dataclass(frozen=True)
class Estimate:
    wall_seconds: float
    peak_memory_bytes: int
    trials: int
    basis: str


@dataclass(frozen=True)
class Measurement:
    """What a finished job tells about the machine."""

    shape: TableShape
    boosting_rounds: int  # every round trained (all folds and trials of a search)
    train_rows: int  # rows in each training (a fold's, or the split's)
    train_seconds: float
    wall_seconds: float
    memory_growth_bytes: float
    columns_read: int


class CostBook:
    """The Trainer's measured costs, kept in its work directory."""

    def __init__(self, work_dir: Path) -> None:
        self._path = work_dir / COSTS_FILE
        self._lock = threading.Lock()
        self._costs = self._load()

    @property
    def costs(self) -> Costs:
        return self._costs

    def _load(self) -> Costs:
        try:
            data = json.loads(self._path.read_text())
            return Costs(**{k: v for k, v in data.items() if k in Costs.__dataclass_fields__})
        except FileNotFoundError:
            return Costs()
        except (OSError, ValueError, TypeError) as error:
            logger.warning("measured costs unreadable; using defaults", extra={"error": str(error)})
            return Costs()

    def record(self, measurement: Measurement) -> None:
        with self._lock:
            self._costs = updated(self._costs, measurement)
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                scratch = self._path.with_suffix(".tmp")
                scratch.write_text(json.dumps(asdict(self._costs)))
                os.replace(scratch, self._path)
            except OSError as error:
                logger.warning("could not keep measured costs", extra={"error": str(error)})


def updated(costs: Costs, m: Measurement) -> Costs:
    """Costs moved towards what one job measured."""
    if m.boosting_rounds <= 0 or m.train_seconds <= 0 or m.train_rows <= 0:
        return costs
    cell_rounds = m.train_rows * max(1, m.shape.features) * m.boosting_rounds * m.shape.classes
    fixed = costs.seconds_per_round * m.boosting_rounds * m.shape.classes
    per_cell = max(1e-10, (m.train_seconds - fixed) / max(1, cell_rounds))
    cells = max(1, m.shape.rows * max(1, m.columns_read))
    per_byte = max(1.0, m.memory_growth_bytes / cells) if m.memory_growth_bytes > 0 else None
    overhead = max(0.0, m.wall_seconds - m.train_seconds)

    def blend(old: float, new: float) -> float:
        return (1 - LEARNING_RATE) * old + LEARNING_RATE * new

    return replace(
        costs,
        seconds_per_cell_round=blend(costs.seconds_per_cell_round, per_cell),
        bytes_per_cell=blend(costs.bytes_per_cell, per_byte)
        if per_byte is not None
        else costs.bytes_per_cell,
        overhead_seconds=blend(costs.overhead_seconds, overhead),
        jobs_measured=costs.jobs_measured + 1,
    )


def estimate(
    costs: Costs,
    shape: TableShape,
    columns_read: int,
    *,
    num_iterations: int = 0,
    search: bool = False,
    budget_seconds: float | None = None,
    max_trials: int | None = None,
) -> Estimate:
    basis = (
        f"costs measured on {costs.jobs_measured} job(s)"
        if costs.jobs_measured
        else "default costs (no job measured yet)"
    )
    memory = costs.base_memory_bytes + costs.bytes_per_cell * shape.rows * max(1, columns_read)
    if not search:
        cap = num_iterations or _default_rounds(shape)
        rounds = cap if num_iterations else max(1, round(cap * DEFAULT_ROUNDS_SHARE))
        train = _train_seconds(costs, int(shape.rows * 0.8), shape, rounds)
        return Estimate(costs.overhead_seconds + train, int(memory), 1, basis)
    affordable = cv_affordable_cells(shape.rows, shape.features, budget_seconds)
    cv = shape.rows < CV_MAX_ROWS and affordable  # as fit/search.py
    folds = CV_FOLDS * cv_repeats(shape.rows) if cv else 1
    fold_rows = int(shape.rows * (0.8 if folds == 1 else (CV_FOLDS - 1) / CV_FOLDS))
    rounds = min(MAX_SEARCH_ROUNDS, SEARCH_ROUNDS_PER_FOLD)
    trial = folds * _train_seconds(costs, fold_rows, shape, rounds)
    refit = _train_seconds(costs, shape.rows, shape, round(rounds * 1.25))
    if budget_seconds is not None:
        fits = max(1, math.floor(budget_seconds / max(trial, 1e-6)))
        trials = min(max_trials, fits) if max_trials else fits
        search_seconds = min(budget_seconds, trials * trial) if max_trials else budget_seconds
    else:
        trials = max_trials or 1
        search_seconds = trials * trial
    # The search keeps the bins of each fold (and max_bin choice): about twice a fit's memory.
    memory += costs.bytes_per_cell * shape.rows * max(1, columns_read)
    wall = costs.overhead_seconds + search_seconds + refit
    return Estimate(wall, int(memory), int(trials), f"{basis}; {folds} fold(s) a trial")


def _default_rounds(shape: TableShape) -> int:
    cells = max(1, int(shape.rows * 0.8) * max(1, shape.features))
    return int(min(1000, max(50, DEFAULT_BOOSTING_WORK / cells)))


def _train_seconds(costs: Costs, rows: int, shape: TableShape, rounds: int) -> float:
    per_round = costs.seconds_per_round + costs.seconds_per_cell_round * rows * max(
        1, shape.features
    )
    return per_round * rounds * shape.classes
