"""A quote before training: wall time, peak memory and trials of a job, from the
dataset's profile and the costs this Trainer measured on the jobs it trained.

The cost model is deliberately simple, two lines and two constants:

- time a round = `seconds_per_round` + `seconds_per_cell_round` x training rows
  x features: the fixed part (tree bookkeeping, validation, callbacks, a
  search's per-trial work) dominates small tables, the other large ones;
- memory growth = `fixed_growth_bytes` + `bytes_per_cell` x rows x columns read;
- `overhead_seconds`: the rest of a job (dataset read, MLflow, registry), and
  `base_memory_bytes`, the Trainer before the job.

Each line is fitted to the last `HISTORY` jobs this Trainer finished (kept in
`<work_dir>/costs.json`, so the quote follows the machine it runs on) by least
squares on relative error with both terms non-negative. The defaults below
(measured on the 2-core reference machine) join the fit as `PRIOR_WEIGHT` jobs at
a small and a large table, so the first jobs move the quote without deciding
it alone. Both terms are fitted together because one job cannot tell them apart:
a small table's fixed cost divided by its few cells reads as a huge per-cell rate
(a 1,300-row search once taught 30 KB a cell, and the next quote asked for
5.4 GiB where the job grew by 41 MiB). `overhead_seconds` is a moving average
(weight `LEARNING_RATE`). `basis` in the answer says how many jobs it rests on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

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
HISTORY = 40
PRIOR_WEIGHT = 0.1
# Where the defaults join the fits: a small and a large table (cells a round; cells read).
PRIOR_ROUND_CELLS = (1e3, 1e7)
PRIOR_READ_CELLS = (1e4, 1e8)

# (cells, measured value): cells a round with seconds a round; cells read with bytes grown.
Point = tuple[float, float]


@dataclass(frozen=True)
class Costs:
    seconds_per_cell_round: float = 4e-8
    seconds_per_round: float = 4e-4
    bytes_per_cell: float = 60.0
    fixed_growth_bytes: float = 100e6
    overhead_seconds: float = 2.0
    base_memory_bytes: float = 450e6
    jobs_measured: int = 0
    round_times: tuple[Point, ...] = ()
    memory_growths: tuple[Point, ...] = ()


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
            known = {k: v for k, v in data.items() if k in Costs.__dataclass_fields__}
            for history in ("round_times", "memory_growths"):
                known[history] = tuple((float(x), float(y)) for x, y in known.get(history, ()))
            return Costs(**known)
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
    """Costs refitted with what one job measured (see the module's docstring)."""
    if m.boosting_rounds <= 0 or m.train_seconds <= 0 or m.train_rows <= 0:
        return costs
    round_cells = float(m.train_rows * max(1, m.shape.features))
    round_seconds = m.train_seconds / (m.boosting_rounds * m.shape.classes)
    round_times = (*costs.round_times, (round_cells, round_seconds))[-HISTORY:]
    memory_growths = costs.memory_growths
    if m.memory_growth_bytes > 0:
        read_cells = float(max(1, m.shape.rows * max(1, m.columns_read)))
        memory_growths = (*memory_growths, (read_cells, m.memory_growth_bytes))[-HISTORY:]
    defaults = Costs()
    fixed_seconds, seconds_per_cell = fit_line(
        round_times,
        (defaults.seconds_per_round, defaults.seconds_per_cell_round),
        PRIOR_ROUND_CELLS,
    )
    fixed_bytes, bytes_per_cell = fit_line(
        memory_growths,
        (defaults.fixed_growth_bytes, defaults.bytes_per_cell),
        PRIOR_READ_CELLS,
    )
    overhead = max(0.0, m.wall_seconds - m.train_seconds)
    return replace(
        costs,
        seconds_per_round=fixed_seconds,
        seconds_per_cell_round=seconds_per_cell,
        fixed_growth_bytes=fixed_bytes,
        bytes_per_cell=bytes_per_cell,
        overhead_seconds=(1 - LEARNING_RATE) * costs.overhead_seconds + LEARNING_RATE * overhead,
        jobs_measured=costs.jobs_measured + 1,
        round_times=round_times,
        memory_growths=memory_growths,
    )


def fit_line(
    points: Sequence[Point], prior: tuple[float, float], prior_at: tuple[float, float]
) -> tuple[float, float]:
    """`fixed + per_cell x cells` through the points and the prior line's values at
    `prior_at` (weight PRIOR_WEIGHT each), least squares on relative error, both
    terms non-negative (a negative one is dropped and the other refitted alone)."""
    prior_points = [(x, prior[0] + prior[1] * x) for x in prior_at]
    xs = np.array([x for x, _ in prior_points] + [x for x, _ in points])
    ys = np.array([y for _, y in prior_points] + [y for _, y in points])
    weights = np.array([PRIOR_WEIGHT] * len(prior_points) + [1.0] * len(points)) / ys
    design = np.column_stack([np.ones_like(xs), xs]) * weights[:, None]
    target = ys * weights
    fixed, per_cell = np.linalg.lstsq(design, target, rcond=None)[0]
    if fixed < 0:
        fixed, per_cell = (
            0.0,
            float(np.dot(design[:, 1], target) / np.dot(design[:, 1], design[:, 1])),
        )
    elif per_cell < 0:
        fixed, per_cell = (
            float(np.dot(design[:, 0], target) / np.dot(design[:, 0], design[:, 0])),
            0.0,
        )
    return float(fixed), float(per_cell)


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
    cells_read = shape.rows * max(1, columns_read)
    memory = costs.base_memory_bytes + costs.fixed_growth_bytes + costs.bytes_per_cell * cells_read
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
    # After cross-validation the fold models are averaged; after a holdout the best
    # configuration is refit on every row, within the budget (fit/search.py).
    refit = 0.0 if cv else _train_seconds(costs, shape.rows, shape, round(rounds * 1.25))
    if budget_seconds is not None:
        room = max(trial, budget_seconds - refit)  # the first trial always runs
        fits = max(1, math.floor(room / max(trial, 1e-6)))
        trials = min(max_trials, fits) if max_trials else fits
        search_seconds = trials * trial if max_trials and max_trials < fits else room
    else:
        trials = max_trials or 1
        search_seconds = trials * trial
    # The search keeps the bins of each fold (and max_bin choice): about twice a fit's memory.
    memory += costs.bytes_per_cell * cells_read
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
