"""A search over LightGBM configurations within a budget, scored by cross-validation.

`search_model` is the pipeline's `train_model` for a job with a `search`:

- **Validation.** Below `CV_MAX_ROWS` rows every configuration is scored by
  `CV_FOLDS`-fold cross-validation (stratified for classification, shuffled with
  the job's seed); from `CV_MAX_ROWS` rows on, by the pipeline's holdout split
  (the folds would cost five trainings for little gain in certainty). Below
  `CV_REPEAT_ROWS` rows the folds are drawn `CV_REPEATS` times, so the ranking
  on a tiny table rests on more than five noisy scores.
- **Optimiser.** Optuna's TPE sampler (seeded, multivariate) with a median
  pruner that stops a configuration after a fold when it is clearly behind;
  trials run one after another with a fixed thread count, so a seed and
  `max_trials` give the same trials, and the same model, every time. Trial 0 is
  the default job's configuration, so a search never ends worse than it.
- **Space.** leaves, depth, rows per leaf, learning rate (with early stopping),
  feature and row subsampling, L1/L2, categorical smoothing, max bins; and where
  the target suggests it the objective (count → poisson/tweedie; skewed positive
  → gamma/tweedie) or class weights (imbalanced classes). A parameter the job
  sets itself is not searched.
- **Budget.** The search stops at `max_trials`, or when the time left of its
  budget would not cover the final refit (after a holdout) and one more trial as
  quick as the quickest; a trial cut by the budget is dropped.
  The job's own deadline (max_run_duration) reached mid-search keeps the best
  configuration so far (`stopped_by = "deadline"`).
- **The model** is one LightGBM booster: after cross-validation the best
  trial's fold models averaged into one; after a holdout the best configuration
  refit on every row with its rounds scaled to the larger table. TreeSHAP, trust
  flags, batch scoring and pyfunc loading work as for any model. Its reported
  metrics are the best trial's cross-validated means, with their spread across
  folds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from services.training import reasons
from services.training.fit.pipeline import (
    LIGHTGBM_METRICS,
    NoHooks,
    PipelineConfig,
    PreparedTable,
    TrainingHooks,
    TrainingResult,
    TrainingStopped,
    check_params_for_task,
    evaluate,
    lightgbm_feature_names,
    prepare_table,
    split_rows,
)
from services.training.fit.report import evaluation_report
from services.training.model import pyfunc_model
from services.training.model.columns import ColumnInfo
from services.training.model.params import ParamValue, as_strings
from services.training.model.targets import PRIMARY_METRICS, Task, TrainingFailure

logger = logging.getLogger("modelyard.trainer.search")
optuna.logging.set_verbosity(optuna.logging.WARNING)

CV_MAX_ROWS = 100_000
CV_FOLDS = 5
# Below this many rows the K folds are drawn CV_REPEATS times, each time shuffled with
# another seed (repeated K-fold), and a configuration is scored on all of them: on a
# few hundred rows one set of folds ranks configurations by its own noise (diabetes,
# 331 training rows: the 60 s search chose a configuration worse on the test rows
# than the 10 s one). The final model averages every fold model. The rule depends on
# rows only, so a replay draws the same folds; at 500 rows a trial of 15 folds still
# fits a budget of a few seconds.
CV_REPEAT_ROWS = 500
CV_REPEATS = 3
CV_CELLS_PER_SECOND = 1e7 / 3600
MIN_SEARCH_ROWS = 4 * CV_FOLDS
MAX_SEARCH_ROUNDS = 3000
# Below this many training rows a trial uses one thread: on small tables LightGBM's
# threads cost more in synchronisation than they save (measured: 0.4 ms an iteration
# on one thread against 9-22 ms on two, 350 rows, 2 busy cores).
SINGLE_THREAD_ROWS = 20_000
# Imbalanced: the rarest class has less than this share of the commonest one.
IMBALANCE_RATIO = 0.25
# Skewed: the target's sample skewness above this (and every value positive).
SKEWED = 1.0
# After a holdout the final refit trains on 1.25 times the rows, so 1.25 times the rounds.
HOLDOUT_REFIT_FACTOR = 1.25

LAMBDA_MAX = 100.0
# A trial replaces the best so far only when it is better on the folds by more than
# this many standard errors of the per-fold differences (cross-validation).
SELECTION_MARGIN = 1.0
# LightGBM one-hot encodes a categorical of at most this many levels (max_cat_to_onehot);
# above it the categorical parameters below decide how its levels are grouped.
ONE_HOT_LEVELS = 4
# LightGBM's own defaults: the default point of a table with many-level categoricals.
CATEGORICAL_DEFAULTS: dict[str, Any] = {
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "min_data_per_group": 100,
    "max_cat_threshold": 32,
}

COMPLETE, PRUNED, FAILED = "COMPLETE", "PRUNED", "FAILED"


@dataclass(frozen=True)
class PortfolioEntry:
    """A known-good LightGBM configuration tried before the optimiser's own proposals."""

    source: str
    params: dict[str, Any]


# AutoGluon's LightGBM models (its tabular presets: GBM, GBMXT with extra trees,
# GBMLarge), then FLAML's zero-shot ("flaml.default") LightGBM portfolio for the task,
# learnt on OpenML tables: written in LightGBM's names (n_estimators left to early
# stopping, log_max_bin b as max_bin 2^b - 1) and clipped into the searched space.
SHARED_PORTFOLIO = [
    PortfolioEntry("AutoGluon GBM", {"learning_rate": 0.05}),
    PortfolioEntry("AutoGluon GBMXT", {"learning_rate": 0.05, "extra_trees": True}),
    PortfolioEntry(
        "AutoGluon GBMLarge",
        {"learning_rate": 0.03, "num_leaves": 128, "feature_fraction": 0.9, "min_data_in_leaf": 3},
    ),
]
# Many-level categoricals (zip codes, streets): LightGBM's defaults want 100 rows per
# group of levels and split off at most 32 levels at a time, with strong smoothing;
# measured on bench/search.py's zip prices (400 zips, 150 streets, 4,500 rows) this
# entry's RMSE was 31 against 54 with the defaults.
MANY_LEVELS_ENTRY = PortfolioEntry(
    "many-level categoricals",
    {"min_data_per_group": 5, "max_cat_threshold": 256, "cat_smooth": 5.0, "cat_l2": 1.0},
)
FLAML_ZERO_SHOT: dict[Task, list[dict[str, Any]]] = {
    Task.REGRESSION: [
        {
            "num_leaves": 42,
            "min_data_in_leaf": 12,
            "learning_rate": 0.0217,
            "max_bin": 127,
            "feature_fraction": 0.739,
            "lambda_l1": 0.0036,
            "lambda_l2": 12.08,
        },
        {
            "num_leaves": 122,
            "min_data_in_leaf": 2,
            "learning_rate": 0.0226,
            "max_bin": 511,
            "feature_fraction": 0.702,
            "lambda_l1": 0.0043,
            "lambda_l2": 0.113,
        },
    ],
    Task.BINARY: [
        {
            "num_leaves": 139,
            "min_data_in_leaf": 8,
            "learning_rate": 0.0482,
            "max_bin": 511,
            "feature_fraction": 0.526,
            "lambda_l1": 0.0029,
            "lambda_l2": 0.0245,
        },
        {
            "num_leaves": 4,
            "min_data_in_leaf": 3,
            "learning_rate": 0.01,
            "max_bin": 511,
            "feature_fraction": 0.539,
            "lambda_l1": 15.8,
            "lambda_l2": 34.8,
        },
    ],
    Task.MULTICLASS: [
        {
            "num_leaves": 16,
            "min_data_in_leaf": 52,
            "learning_rate": 0.242,
            "max_bin": 127,
            "feature_fraction": 1.0,
            "lambda_l1": 0.0343,
            "lambda_l2": 0.0387,
        },
        {
            "num_leaves": 24,
            "min_data_in_leaf": 53,
            "learning_rate": 0.0193,
            "max_bin": 63,
            "feature_fraction": 0.4,
            "lambda_l1": 0.0014,
            "lambda_l2": 0.0464,
        },
        {
            "num_leaves": 11,
            "min_data_in_leaf": 94,
            "learning_rate": 0.0628,
            "max_bin": 63,
            "feature_fraction": 0.634,
            "lambda_l1": 0.581,
            "lambda_l2": 43.3,
        },
    ],
}


def portfolio(task: Task, many_level_categoricals: bool = False) -> list[PortfolioEntry]:
    """The known-good configurations a search of this task tries first, in order."""
    zero_shot = [
        PortfolioEntry(f"FLAML zero-shot {task.value.lower()} #{n}", params)
        for n, params in enumerate(FLAML_ZERO_SHOT.get(task, []), start=1)
    ]
    first = [MANY_LEVELS_ENTRY] if many_level_categoricals else []
    return first + SHARED_PORTFOLIO + zero_shot


def categorical_levels(features: pd.DataFrame) -> int:
    """The most levels of any categorical feature (0 without one)."""
    return max(
        (
            len(dtype.categories)
            for dtype in features.dtypes
            if isinstance(dtype, pd.CategoricalDtype)
        ),
        default=0,
    )


@dataclass(frozen=True)
class SearchSpec:
    budget_seconds: float | None
    max_trials: int | None

    def __post_init__(self) -> None:
        if self.budget_seconds is None and self.max_trials is None:
            raise ValueError("a search needs a budget or max_trials")


@dataclass
class TrialRecord:
    number: int
    state: str
    params: dict[str, str]
    objective: str
    metric_name: str
    metric_value: float
    fold_metric_values: list[float]
    rounds: int
    seconds: float
    started_at: float
    best_so_far: bool = False
    # Every metric per fold (kept for the best trial's reported means and spread).
    fold_metrics: list[dict[str, float]] = field(default_factory=list)
    curve: dict[str, list[float]] = field(default_factory=dict)
    # Each fold model's best iteration (what the averaged model keeps of each).
    fold_rounds: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SearchStatus:
    trials_done: int
    max_trials: int
    metric_name: str
    best_value: float | None
    seconds_left: float | None


@dataclass
class SearchOutcome:
    trials: list[TrialRecord]
    best_trial: int
    objective: str
    objectives_considered: list[str]
    validation: str
    folds: int  # folds a draw (1 for a holdout)
    fold_repeats: int  # draws of the folds, each shuffled with its own seed
    metric_std: dict[str, float]
    stopped_by: str
    seconds: float
    refit_params: dict[str, ParamValue]
    # Rounds trained over every fold of every trial, and rows in each fold's training.
    boosting_rounds: int = 0
    train_rows: int = 0
    # The best trial's held-out predictions: the rows (indices into the table) and what
    # the fold model that did not train on each predicted for it, for the report.
    held_out_rows: np.ndarray[Any, Any] | None = None
    held_out_raw: np.ndarray[Any, Any] | None = None
    # The best trial's fold models and their best iterations (cross-validation only).
    fold_models: list[tuple[lgb.Booster, int]] = field(default_factory=list)


class SearchHooks(TrainingHooks, Protocol):
    def trial_started(self, number: int, status: SearchStatus) -> None:
        """A trial begins; progress reports until the next call belong to it."""

    def trial_finished(self, trial: TrialRecord, status: SearchStatus) -> None:
        """A trial ended (complete, pruned or failed)."""


class NoSearchHooks(NoHooks):
    def trial_started(self, number: int, status: SearchStatus) -> None:
        return None

    def trial_finished(self, trial: TrialRecord, status: SearchStatus) -> None:
        return None


class Reporter(Protocol):
    """What scoring tells the optimiser after each fold (Optuna's trial; a pruner)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class _BudgetSpent(Exception):
    """The search's own budget ran out during a trial."""


# -- the plan: folds, objectives, what is searched -------------------------------------


@dataclass(frozen=True)
class Choice:
    """One objective (or class weighting) the search may pick, and why it is offered."""

    name: str
    params: dict[str, ParamValue]


@dataclass
class SearchPlan:
    task: Task
    folds: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
    validation: str
    choices: list[Choice]
    why_choices: str
    fixed: dict[str, ParamValue]
    seed: int
    max_rounds: int
    metric_name: str
    higher_is_better: bool

    @property
    def fold_repeats(self) -> int:
        """How many times `folds` drew the K folds (one draw a holdout)."""
        if self.validation != "cv":
            return 1
        train, valid = self.folds[0]
        return cv_repeats(len(train) + len(valid))


def plan_search(
    table: PreparedTable,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    budget_seconds: float | None = None,
    validation: str = "",
) -> SearchPlan:
    """`validation` forces `cv` or `holdout` (a replay scores as its original did)."""
    task = table.decision.task
    seed = int(params.get("seed", config.seed))
    folds, validation = _folds(table, config, seed, budget_seconds, validation)
    choices, why = objective_choices(table, params)
    primary = PRIMARY_METRICS[task]
    train_rows = len(folds[0][0])
    cells = max(1, train_rows * max(1, table.features.shape[1]))
    max_rounds = int(params.get("num_iterations", 0)) or int(
        min(MAX_SEARCH_ROUNDS, max(200, 2 * config.boosting_work_budget / cells))
    )
    return SearchPlan(
        task=task,
        folds=folds,
        validation=validation,
        choices=choices,
        why_choices=why,
        fixed=dict(params),
        seed=seed,
        max_rounds=max_rounds,
        metric_name=primary.name,
        higher_is_better=primary.higher_is_better,
    )


def _folds(
    table: PreparedTable,
    config: PipelineConfig,
    seed: int,
    budget_seconds: float | None,
    forced: str = "",
) -> tuple[list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], str]:
    labels = table.labels
    holdout = len(labels) >= CV_MAX_ROWS or not cv_affordable(table, budget_seconds)
    if forced == "holdout" or (holdout and forced != "cv"):
        return [split_rows(labels, table.decision.task, config)], "holdout"
    if len(labels) < MIN_SEARCH_ROWS:
        raise TrainingFailure(
            reasons.SEARCH_TABLE_TOO_SMALL,
            f"{len(labels)} rows with a target; a search's {CV_FOLDS}-fold cross-validation "
            f"needs at least {MIN_SEARCH_ROWS}",
        )
    indices = np.arange(len(labels))
    repeats = cv_repeats(len(labels))
    if table.decision.task == Task.REGRESSION:
        return [
            (train, valid)
            for repeat in range(repeats)
            for train, valid in KFold(CV_FOLDS, shuffle=True, random_state=seed + repeat).split(
                indices
            )
        ], "cv"
    counts = np.bincount(labels, minlength=len(table.decision.class_labels))
    smallest = int(np.argmin(counts))
    if counts[smallest] < CV_FOLDS:
        name = table.decision.class_names[smallest]
        raise TrainingFailure(
            reasons.SEARCH_TABLE_TOO_SMALL,
            f"the smallest class, {name!r}, has {counts[smallest]} rows; a search's "
            f"{CV_FOLDS}-fold stratified cross-validation needs at least {CV_FOLDS} rows "
            "of every class (train without a search, or add rows)",
        )
    return [
        (train, valid)
        for repeat in range(repeats)
        for train, valid in StratifiedKFold(
            CV_FOLDS, shuffle=True, random_state=seed + repeat
        ).split(indices, labels)
    ], "cv"


def cv_repeats(rows: int) -> int:
    """How many times the K folds are drawn (each with seed + repeat) for `rows` rows."""
    return CV_REPEATS if rows < CV_REPEAT_ROWS else 1


def cv_affordable(table: PreparedTable, budget_seconds: float | None) -> bool:
    """Whether a time budget leaves room for K-fold trials (see `cv_affordable_cells`)."""
    return cv_affordable_cells(len(table.labels), table.features.shape[1], budget_seconds)


def cv_affordable_cells(rows: int, features: int, budget_seconds: float | None) -> bool:
    """At most CV_CELLS_PER_SECOND cells (rows x features) per second of budget
    (FLAML's rule of thumb, 10 million cells an hour); a larger table is scored on a
    holdout, five times cheaper a trial, so that a short budget still tries more than
    a handful of configurations.

    A multiclass round grows a tree per class, but the classes are not counted: the
    K fold models averaged are worth more than the extra trials a holdout buys
    (digits, 1,347 rows x 64 features x 10 classes, 60 s on the loaded machine: 3
    trials by cross-validation scored macro F1 0.9866 on the test rows, 7 trials on
    a holdout and a refit 0.9778)."""
    if budget_seconds is None:
        return True
    return rows * max(1, features) <= CV_CELLS_PER_SECOND * budget_seconds


def objective_choices(
    table: PreparedTable, params: dict[str, ParamValue]
) -> tuple[list[Choice], str]:
    """The objectives (or class weightings) worth trying for this target, and why."""
    task = table.decision.task
    labels = table.labels
    if task == Task.REGRESSION:
        if "objective" in params:
            return [Choice(str(params["objective"]), {})], "objective set by the job"
        values = labels.astype("float64")
        whole = bool(np.all(values == np.round(values)))
        if values.min() >= 0 and whole and values.max() > 1:
            return [
                Choice("regression", {"objective": "regression"}),
                Choice("poisson", {"objective": "poisson"}),
                Choice("tweedie", {"objective": "tweedie"}),
            ], "count target (non-negative whole numbers): poisson and tweedie tried"
        if values.min() > 0 and _skewness(values) > SKEWED:
            return [
                Choice("regression", {"objective": "regression"}),
                Choice("gamma", {"objective": "gamma"}),
                Choice("tweedie", {"objective": "tweedie"}),
            ], "skewed positive target: gamma and tweedie tried"
        return [Choice("regression", {"objective": "regression"})], "regression target"
    objective = "binary" if task == Task.BINARY else "multiclass"
    counts = np.bincount(labels, minlength=len(table.decision.class_labels))
    if "class_weight" in params or {"is_unbalance", "scale_pos_weight"} & params.keys():
        return [Choice(objective, {})], "class weighting set by the job"
    if counts.min() < IMBALANCE_RATIO * counts.max():
        return [
            Choice(objective, {"class_weight": "none"}),
            Choice(f"{objective} (balanced class weights)", {"class_weight": "balanced"}),
        ], "imbalanced classes: balanced class weights tried"
    return [Choice(objective, {})], f"{task.value.lower()} target"


def _skewness(values: np.ndarray[Any, Any]) -> float:
    std = float(values.std())
    if std == 0:
        return 0.0
    return float(np.mean(((values - values.mean()) / std) ** 3))


# -- the search ------------------------------------------------------------------------


def search_model(
    frame: pd.DataFrame,
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    search: SearchSpec,
    hooks: SearchHooks | None = None,
    rows_dropped_missing_target: int = 0,
) -> TrainingResult:
    """Search, then refit the best configuration on every row; raises TrainingFailure
    or TrainingStopped (cancel, shutdown, or a deadline before any trial finished)."""
    hooks = hooks or NoSearchHooks()
    started = time.perf_counter()
    table = prepare_table(
        frame, columns, target, requested_task, config, rows_dropped_missing_target
    )
    del frame
    check_params_for_task(params, table.decision.task)
    plan = plan_search(table, params, config, search.budget_seconds)
    prepared_seconds = time.perf_counter() - started
    hooks.decided(table.decision)
    hooks.check()
    searcher = _Searcher(table, plan, config, search, hooks)
    outcome = searcher.run()
    result = final_model(table, outcome, config, _DeadlineExempt(hooks))
    best = outcome.trials[outcome.best_trial]
    result.metrics = _mean_metrics(best.fold_metrics)
    result.curve = best.curve
    result.validation_rows = table.rows_used if plan.validation == "cv" else len(plan.folds[0][1])
    keep_held_out(result, table, outcome, target)
    result.search = outcome
    result.timings.update(
        prepare_seconds=prepared_seconds,
        search_seconds=outcome.seconds,
        train_seconds=time.perf_counter() - started - prepared_seconds,
    )
    return result


class _Searcher:
    def __init__(
        self,
        table: PreparedTable,
        plan: SearchPlan,
        config: PipelineConfig,
        search: SearchSpec,
        hooks: SearchHooks,
    ) -> None:
        self._table = table
        self._plan = plan
        self._config = config
        self._search = search
        self._hooks = hooks
        self._names = lightgbm_feature_names(pyfunc_model.feature_names(table.spec))
        self._many_level_categoricals = categorical_levels(table.features) > ONE_HOT_LEVELS
        self._datasets: dict[tuple[int, int], tuple[lgb.Dataset, lgb.Dataset]] = {}
        self._trials: list[TrialRecord] = []
        self._best: int | None = None
        self._started = time.monotonic()
        self._deadline = (
            self._started + search.budget_seconds if search.budget_seconds is not None else None
        )
        # Seconds kept back from the trials for the final model (see `_refit_reserve`),
        # and the quickest complete trial so far (a new one needs at least that).
        self._reserve = 0.0
        self._quickest_trial = math.inf
        self._rounds_trained = 0
        self._trial_rounds = 0  # rounds the trial being scored trained, over its folds
        # (held-out rows, their predictions) per fold: the trial being scored, the best.
        HeldOut = list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
        self._held_out: HeldOut = []
        self._best_held_out: HeldOut = []
        FoldModels = list[tuple[lgb.Booster, int]]
        self._fold_models: FoldModels = []
        self._best_fold_models: FoldModels = []

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> SearchOutcome:
        study = optuna.create_study(
            direction="maximize" if self._plan.higher_is_better else "minimize",
            sampler=optuna.samplers.TPESampler(
                seed=self._plan.seed, multivariate=True, n_startup_trials=8
            ),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
        )
        for choice in self._plan.choices:
            study.enqueue_trial(self._default_point(choice))
        stopped_by = "max_trials"
        portfolio_queued = False
        try:
            while True:
                limit = self._search.max_trials
                if limit is not None and len(self._trials) >= limit:
                    break
                if self._budget_spent():
                    stopped_by = "budget"
                    break
                if not portfolio_queued and len(self._trials) >= len(self._plan.choices):
                    self._enqueue_portfolio(study)
                    portfolio_queued = True
                self._one_trial(study)
        except _BudgetSpent:
            stopped_by = "budget"
        except TrainingStopped as stop:
            if stop.why != "deadline" or self._best is None:
                raise
            stopped_by = "deadline"
            logger.warning("deadline reached mid-search; keeping the best trial so far")
        return self.run_outcome(stopped_by)

    def _enqueue_portfolio(self, study: optuna.Study) -> None:
        """After the default point with each objective: the portfolio, with the objective
        (or class weighting) that did best, before the optimiser proposes its own."""
        best = self._trials[self._best] if self._best is not None else None
        names = [choice.name for choice in self._plan.choices]
        choice_index = names.index(best.objective) if best is not None else 0
        for point in self._portfolio_points(choice_index):
            study.enqueue_trial(point)

    def run_outcome(self, stopped_by: str) -> SearchOutcome:
        """What the trials so far add up to (the best of them, refit parameters...)."""
        if self._best is None:
            raise TrainingFailure(
                reasons.SEARCH_NO_TRIAL_COMPLETED,
                "the search's budget ended before a single configuration was scored; give it "
                "a larger budget (EstimateTrainingJob tells how long one trial takes)",
            )
        best = self._trials[self._best]
        return SearchOutcome(
            trials=self._trials,
            best_trial=self._best,
            objective=best.objective,
            objectives_considered=[choice.name for choice in self._plan.choices]
            + [self._plan.why_choices],
            validation=self._plan.validation,
            folds=len(self._plan.folds) // self._plan.fold_repeats,
            fold_repeats=self._plan.fold_repeats,
            metric_std=_std_metrics(best.fold_metrics) if self._plan.validation == "cv" else {},
            stopped_by=stopped_by,
            seconds=time.monotonic() - self._started,
            refit_params=self._refit_params(best),
            boosting_rounds=self._rounds_trained,
            train_rows=len(self._plan.folds[0][0]),
            # The first draw of the folds predicts every row once (repeats would
            # count a row several times in the report).
            held_out_rows=np.concatenate([rows for rows, _ in self._best_held_out[:CV_FOLDS]]),
            held_out_raw=np.concatenate([raw for _, raw in self._best_held_out[:CV_FOLDS]]),
            fold_models=self._best_fold_models if self._plan.validation == "cv" else [],
        )

    def _budget_spent(self) -> bool:
        """No time left, after the final model's reserve, for a trial as quick as the
        quickest so far: one that starts and is cut only spends time nobody else uses."""
        if self._deadline is None:
            return False
        needed = self._reserve + (0.0 if math.isinf(self._quickest_trial) else self._quickest_trial)
        return time.monotonic() + needed >= self._deadline

    def _refit_reserve(self, best: TrialRecord, trained_rounds: int) -> float:
        """Seconds the final model of `best` will take, kept back from the trials.

        After cross-validation the fold models are averaged: nothing to train. After
        a holdout the refit trains HOLDOUT_REFIT_FACTOR times the best trial's rounds
        on HOLDOUT_REFIT_FACTOR times its rows, priced at the trial's own seconds per
        round (which include its validation, so the price errs high), with a fifth
        more for a busy machine. (The reserve was 1.9 times the slowest trial's time:
        on digits one slow trial of 20 s made the search stop at 31 s of 60.)"""
        if self._plan.validation == "cv" or trained_rounds <= 0:
            return 0.0
        per_round = best.seconds / trained_rounds
        rounds = max(1, round(best.rounds * HOLDOUT_REFIT_FACTOR))
        return 1.2 * per_round * rounds * HOLDOUT_REFIT_FACTOR

    def _status(self) -> SearchStatus:
        left = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        best = self._trials[self._best].metric_value if self._best is not None else None
        return SearchStatus(
            trials_done=len(self._trials),
            max_trials=self._search.max_trials or 0,
            metric_name=self._plan.metric_name,
            best_value=best,
            seconds_left=left,
        )

    def _one_trial(self, study: optuna.Study) -> None:
        trial = study.ask()
        try:
            record = self.evaluate(self._sample(trial), trial)
        except _BudgetSpent:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        if record.state == COMPLETE:
            study.tell(trial, self._ranking(record))
        elif record.state == PRUNED:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def evaluate(self, point: dict[str, Any], reporter: Reporter) -> TrialRecord:
        """Score one proposed configuration on the folds (`reporter` may prune it after
        a fold); the record is reported to the hooks and kept. Raises _BudgetSpent."""
        # Plain Python values: a numpy scalar would be written as `np.float64(...)`.
        point = {k: v.item() if isinstance(v, np.generic) else v for k, v in point.items()}
        choice = self._plan.choices[int(point.pop("choice"))]
        number = len(self._trials)
        self._hooks.trial_started(number, self._status())
        started_at, started = time.time(), time.perf_counter()
        lgb_params = self._lightgbm_params(point, choice)
        record = TrialRecord(
            number=number,
            state=FAILED,
            params=as_strings(
                {k: v for k, v in lgb_params.items() if k not in ("metric", "verbosity")}
            ),
            objective=choice.name,
            metric_name=self._plan.metric_name,
            metric_value=math.nan,
            fold_metric_values=[],
            rounds=0,
            seconds=0.0,
            started_at=started_at,
        )
        try:
            record.state = self._score(reporter, record, lgb_params, choice)
        except _BudgetSpent:
            record.seconds = time.perf_counter() - started
            self._finish(record)
            raise
        except lgb.basic.LightGBMError as error:
            logger.info("configuration refused by LightGBM", extra={"error": str(error)})
            record.state = FAILED
        record.seconds = time.perf_counter() - started
        if record.state == COMPLETE:
            self._quickest_trial = min(self._quickest_trial, record.seconds)
        if record.state == COMPLETE and self._is_better(record):
            self._reserve = self._refit_reserve(record, self._trial_rounds)
            self._best = number
            self._best_held_out = self._held_out
            self._best_fold_models = self._fold_models
            record.best_so_far = True
        self._finish(record)
        return record

    def _finish(self, record: TrialRecord) -> None:
        self._trials.append(record)
        self._hooks.trial_finished(record, self._status())

    def _is_better(self, record: TrialRecord) -> bool:
        if self._best is None:
            return True
        best = self._trials[self._best]
        if self._plan.validation == "cv" and SELECTION_MARGIN > 0:
            return self._clearly_better(record, best)
        if self._plan.higher_is_better:
            return self._ranking(record) > self._ranking(best)
        return self._ranking(record) < self._ranking(best)

    def _clearly_better(self, record: TrialRecord, best: TrialRecord) -> bool:
        """Better on the same folds by more than SELECTION_MARGIN standard errors of the
        per-fold differences: on a small table hundreds of trials find one that is
        better by chance on these folds and worse on new rows (bench/search.py's
        diabetes, 150 trials: the plain best scored RMSE 59.5 on the test rows, this
        rule's pick 57.6)."""
        sign = 1.0 if self._plan.higher_is_better else -1.0
        gains = sign * (np.asarray(record.fold_metric_values) - best.fold_metric_values)
        spread = float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0
        if spread == 0.0:
            if self._plan.higher_is_better:
                return self._ranking(record) > self._ranking(best)
            return self._ranking(record) < self._ranking(best)
        return float(np.mean(gains)) > SELECTION_MARGIN * spread / math.sqrt(len(gains))

    def _ranking(self, record: TrialRecord) -> float:
        """The primary metric, ties broken by the tie-break metric (log loss, MAE)."""
        primary = PRIMARY_METRICS[self._plan.task]
        value = record.metric_value
        if primary.tie_break is None:
            return value
        tie = float(np.mean([fold[primary.tie_break] for fold in record.fold_metrics]))
        sign = -1.0 if primary.higher_is_better else 1.0
        return value + sign * 1e-6 * tie

    # -- one configuration --------------------------------------------------------------

    def _sample(self, trial: optuna.Trial) -> dict[str, Any]:
        fixed = self._plan.fixed
        rows = len(self._plan.folds[0][0])
        point: dict[str, Any] = {
            "choice": trial.suggest_categorical("choice", list(range(len(self._plan.choices))))
        }

        def choose(name: str, suggest: Callable[[], Any]) -> None:
            if name not in fixed:
                point[name] = suggest()

        choose("num_leaves", lambda: trial.suggest_int("num_leaves", 4, 256, log=True))
        choose("max_depth", lambda: trial.suggest_categorical("max_depth", [-1, 3, 5, 8, 12]))
        most = max(2, min(200, rows // 10))
        choose("min_data_in_leaf", lambda: trial.suggest_int("min_data_in_leaf", 2, most, log=True))
        choose("learning_rate", lambda: trial.suggest_float("learning_rate", 0.01, 0.3, log=True))
        choose("feature_fraction", lambda: trial.suggest_float("feature_fraction", 0.4, 1.0))
        choose("bagging_fraction", lambda: trial.suggest_float("bagging_fraction", 0.5, 1.0))
        choose("lambda_l1", lambda: trial.suggest_float("lambda_l1", 1e-8, LAMBDA_MAX, log=True))
        choose("lambda_l2", lambda: trial.suggest_float("lambda_l2", 1e-8, LAMBDA_MAX, log=True))
        choose("extra_trees", lambda: trial.suggest_categorical("extra_trees", [False, True]))
        if self._many_level_categoricals:
            choose("cat_smooth", lambda: trial.suggest_float("cat_smooth", 1.0, 100.0, log=True))
            choose("cat_l2", lambda: trial.suggest_float("cat_l2", 0.1, 100.0, log=True))
            choose(
                "min_data_per_group",
                lambda: trial.suggest_int("min_data_per_group", 2, 200, log=True),
            )
            choose(
                "max_cat_threshold",
                lambda: trial.suggest_categorical("max_cat_threshold", [32, 64, 128, 256]),
            )
        choose("max_bin", lambda: trial.suggest_categorical("max_bin", [63, 127, 255, 511]))
        return point

    def _default_point(self, choice: Choice) -> dict[str, Any]:
        """The default job's configuration (trial 0), with each objective choice."""
        rows = len(self._plan.folds[0][0])
        defaults: dict[str, Any] = {
            "choice": self._plan.choices.index(choice),
            "num_leaves": 31,
            "max_depth": -1,
            "min_data_in_leaf": min(20, max(2, min(200, rows // 10))),
            "learning_rate": 0.1,
            "feature_fraction": 1.0,
            "bagging_fraction": 1.0,
            "lambda_l1": 1e-8,
            "lambda_l2": 1e-8,
            "max_bin": 255,
            "extra_trees": False,
        }
        if self._many_level_categoricals:
            defaults.update(CATEGORICAL_DEFAULTS)
        return {k: v for k, v in defaults.items() if k == "choice" or k not in self._plan.fixed}

    def _portfolio_points(self, choice_index: int) -> list[dict[str, Any]]:
        """The portfolio's configurations for this task, on the default point and inside
        the searched space (a parameter the job sets is left to the job)."""
        rows = len(self._plan.folds[0][0])
        most = max(2, min(200, rows // 10))
        points = []
        for entry in portfolio(self._plan.task, self._many_level_categoricals):
            point = {**self._default_point(self._plan.choices[choice_index]), **entry.params}
            point["min_data_in_leaf"] = min(int(point["min_data_in_leaf"]), most)
            points.append(
                {k: v for k, v in point.items() if k == "choice" or k not in self._plan.fixed}
            )
        return points

    def _lightgbm_params(self, point: dict[str, Any], choice: Choice) -> dict[str, Any]:
        task = self._plan.task
        chosen: dict[str, Any] = {
            "objective": {
                Task.BINARY: "binary",
                Task.MULTICLASS: "multiclass",
                Task.REGRESSION: "regression",
            }[task],
            "seed": self._plan.seed,
            "deterministic": True,
            "force_col_wise": True,
            "feature_pre_filter": False,
            "num_threads": search_threads(len(self._plan.folds[0][0]), self._config),
            "verbosity": -1,
            **point,
            **{k: v for k, v in self._plan.fixed.items() if k not in ("num_iterations",)},
            **choice.params,
            "metric": LIGHTGBM_METRICS[task][:1],
        }
        if chosen.get("bagging_fraction", 1.0) < 1.0 and "bagging_freq" not in chosen:
            chosen["bagging_freq"] = 1
        if task == Task.MULTICLASS:
            chosen["num_class"] = len(self._table.decision.class_labels)
        if not chosen["num_threads"]:
            chosen.pop("num_threads")
        return chosen

    def _score(
        self,
        trial: Reporter,
        record: TrialRecord,
        lgb_params: dict[str, Any],
        choice: Choice,
    ) -> str:
        params = dict(lgb_params)
        class_weight = params.pop("class_weight", "none")
        params.pop("early_stopping_round", None)
        patience = self._patience(params)
        rounds: list[int] = []
        self._trial_rounds = 0
        self._held_out = []
        self._fold_models = []
        for fold, (train_index, valid_index) in enumerate(self._plan.folds):
            train_set, valid_set = self._fold_data(fold, int(params.get("max_bin", 255)))
            weights = (
                _balanced_weights(self._table, train_index) if class_weight == "balanced" else None
            )
            train_set.set_weight(weights)
            evaluation: dict[str, Any] = {}
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=self._plan.max_rounds,
                valid_sets=[valid_set],
                valid_names=["validation"],
                keep_training_booster=True,  # no model-string round trip per fold
                callbacks=[
                    lgb.record_evaluation(evaluation),
                    self._iteration_callback(fold),
                    lgb.early_stopping(patience, first_metric_only=True, verbose=False),
                ],
            )
            self._rounds_trained += booster.current_iteration()
            self._trial_rounds += booster.current_iteration()
            best = booster.best_iteration or booster.current_iteration()
            features = self._table.features.iloc[valid_index].set_axis(self._names, axis=1)
            raw = np.asarray(booster.predict(features, num_iteration=best))
            metrics = evaluate(self._plan.task, self._table.labels[valid_index], raw)
            self._held_out.append((np.asarray(valid_index), raw))
            record.fold_metrics.append(metrics)
            record.fold_metric_values.append(metrics[self._plan.metric_name])
            record.curve = {
                name: [float(v) for v in values]
                for name, values in evaluation.get("validation", {}).items()
            }
            rounds.append(int(best))
            self._fold_models.append((booster, int(best)))
            record.fold_rounds = list(rounds)
            record.rounds = round(float(np.mean(rounds)))
            record.metric_value = float(np.mean(record.fold_metric_values))
            if fold < len(self._plan.folds) - 1:
                trial.report(record.metric_value, fold)
                if trial.should_prune():
                    return PRUNED
        return COMPLETE

    def _patience(self, params: dict[str, Any]) -> int:
        """Early stopping's patience: the job's, else 30-100 rounds by learning rate."""
        return int(self._plan.fixed.get("early_stopping_round", 0)) or max(
            30, min(100, int(3 / float(params.get("learning_rate", 0.1))))
        )

    def _fold_data(self, fold: int, max_bin: int) -> tuple[lgb.Dataset, lgb.Dataset]:
        """Binned once per fold and max_bin: the other parameters leave the bins alone."""
        key = (fold, max_bin)
        if key not in self._datasets:
            train_index, valid_index = self._plan.folds[fold]
            features = self._table.features
            dataset_params = {
                "max_bin": max_bin,
                "feature_pre_filter": False,
                "verbosity": -1,
                "seed": self._plan.seed,
                "deterministic": True,
            }
            train_set = lgb.Dataset(
                features.iloc[train_index].set_axis(self._names, axis=1),
                label=self._table.labels[train_index],
                params=dataset_params,
                free_raw_data=False,
            )
            valid_set = lgb.Dataset(
                features.iloc[valid_index].set_axis(self._names, axis=1),
                label=self._table.labels[valid_index],
                reference=train_set,
                params=dataset_params,
                free_raw_data=False,
            )
            self._datasets[key] = (train_set, valid_set)
        return self._datasets[key]

    def _iteration_callback(self, fold: int) -> Callable[..., None]:
        total = self._plan.max_rounds * len(self._plan.folds)

        def callback(env: Any) -> None:
            self._hooks.check()
            # The trials stop short of the deadline by the final model's reserve.
            if self._deadline is not None and time.monotonic() + self._reserve >= self._deadline:
                raise _BudgetSpent()
            if env.evaluation_result_list:
                _, metric_name, value, _ = env.evaluation_result_list[0][:4]
                done = fold * self._plan.max_rounds + env.iteration + 1
                self._hooks.progress(done, total, str(metric_name), float(value))

        callback.order = 5  # type: ignore[attr-defined]  # before early stopping
        return callback

    def _refit_params(self, best: TrialRecord) -> dict[str, ParamValue]:
        """The best configuration as the refit trains it: fixed rounds, no early stopping."""
        params: dict[str, ParamValue] = {}
        for name, text in best.params.items():
            params[name] = typed_param(text)
        params.setdefault("class_weight", "none")
        if self._plan.validation == "cv":
            # The fold models are the model: what a replay needs to train them again.
            params["num_iterations"] = self._plan.max_rounds
            params["early_stopping_round"] = self._patience(params)
            return params
        params["num_iterations"] = max(1, round(best.rounds * HOLDOUT_REFIT_FACTOR))
        params["early_stopping_round"] = 0
        return params


def search_threads(train_rows: int, config: PipelineConfig) -> int:
    """A fixed thread count (recorded with the configuration, so a replay uses it too)."""
    if train_rows < SINGLE_THREAD_ROWS:
        return 1
    return config.num_threads or 1


def typed_param(text: str) -> ParamValue:
    """A parameter back from its contract string (as_strings' inverse for our values)."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _balanced_weights(table: PreparedTable, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    labels = table.labels[index]
    counts = np.bincount(labels, minlength=len(table.decision.class_labels)).astype("float64")
    per_class = len(labels) / (len(counts) * np.maximum(counts, 1.0))
    return np.asarray(per_class[labels])


def _mean_metrics(folds: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([fold[name] for fold in folds])) for name in folds[0]}


def _std_metrics(folds: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.std([fold[name] for fold in folds])) for name in folds[0]}


class _DeadlineExempt:
    """The refit after a search the deadline stopped still runs; a cancel still stops it."""

    def __init__(self, hooks: TrainingHooks) -> None:
        self._hooks = hooks

    def check(self) -> None:
        try:
            self._hooks.check()
        except TrainingStopped as stop:
            if stop.why != "deadline":
                raise

    def decided(self, decision: Any) -> None:
        return None

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        self._hooks.progress(iteration, total, metric_name, value)


# -- the final model -------------------------------------------------------------------


def refit(
    table: PreparedTable,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    hooks: TrainingHooks | None = None,
) -> TrainingResult:
    """One booster on every row with fixed parameters and rounds (no early stopping):
    the final model of a search, and what a replay of a searched job trains."""
    hooks = hooks or NoHooks()
    started = time.perf_counter()
    lgb_params: dict[str, Any] = {
        k: v for k, v in params.items() if k not in ("num_iterations", "early_stopping_round")
    }
    class_weight = lgb_params.pop("class_weight", "none")
    rounds = int(params.get("num_iterations", 100))
    lgb_params["verbosity"] = -1
    lgb_params.pop("metric", None)
    names = lightgbm_feature_names(pyfunc_model.feature_names(table.spec))
    weights = (
        _balanced_weights(table, np.arange(len(table.labels)))
        if class_weight == "balanced"
        else None
    )
    train_set = lgb.Dataset(
        table.features.set_axis(names, axis=1),
        label=table.labels,
        weight=weights,
        params=lgb_params,
        free_raw_data=True,
    )

    def callback(env: Any) -> None:
        hooks.check()
        hooks.progress(env.iteration + 1, rounds, "refit", float(env.iteration + 1))

    callback.order = 5  # type: ignore[attr-defined]
    booster = lgb.train(lgb_params, train_set, num_boost_round=rounds, callbacks=[callback])
    return model_result(table, booster, dict(params), started)


def final_model(
    table: PreparedTable,
    outcome: SearchOutcome,
    config: PipelineConfig,
    hooks: TrainingHooks | None = None,
) -> TrainingResult:
    """After cross-validation the best trial's fold models averaged into one model;
    after a holdout the best configuration refit on every row."""
    if not outcome.fold_models:
        return refit(table, outcome.refit_params, config, hooks)
    started = time.perf_counter()
    booster = average_boosters(outcome.fold_models)
    return model_result(table, booster, dict(outcome.refit_params), started)


def average_boosters(models: list[tuple[lgb.Booster, int]]) -> lgb.Booster:
    """One LightGBM model whose raw score is the mean of the models' raw scores: every
    model's trees up to its best iteration, each leaf value divided by their number.

    The result is an ordinary booster: exact TreeSHAP (the contributions are the
    models' contributions averaged), batch scoring and pyfunc loading as for any.
    The average is over raw scores (log-odds, log of a rate), as boosting adds."""
    texts = [booster.model_to_string(num_iteration=best) for booster, best in models]
    header, _ = texts[0].split("\nTree=", 1)
    _, tail = texts[0].split("end of trees", 1)
    # Without tree_sizes LightGBM parses the trees one after another (the sizes change).
    header = "\n".join(line for line in header.split("\n") if not line.startswith("tree_sizes="))
    share = 1.0 / len(models)
    trees: list[str] = []
    for text in texts:
        body = text.split("\nTree=", 1)[1].split("end of trees", 1)[0]
        for block in body.split("\nTree="):
            lines = block.strip("\n").split("\n")[1:]  # the first is the tree's number
            trees.append(
                "\n".join([f"Tree={len(trees)}", *(_scaled(line, share) for line in lines)])
            )
    text = header + "\n" + "\n\n\n".join(trees) + "\n\n\nend of trees" + tail
    return lgb.Booster(model_str=text)


def _scaled(line: str, share: float) -> str:
    """A tree's line with its leaf (and internal node) values times `share`."""
    key, _, values = line.partition("=")
    if key not in ("leaf_value", "internal_value") or not values:
        return line
    return f"{key}=" + " ".join(repr(float(v) * share) for v in values.split(" "))


def model_result(
    table: PreparedTable,
    booster: lgb.Booster,
    effective: dict[str, ParamValue],
    started: float,
) -> TrainingResult:
    """The search's final booster as a job's result (metrics are the caller's)."""
    importance = dict(
        zip(
            pyfunc_model.feature_names(table.spec),
            (float(gain) for gain in booster.feature_importance("gain")),
            strict=True,
        )
    )
    return TrainingResult(
        decision=table.decision,
        spec=table.spec,
        booster=booster,
        metrics={},
        curve={},
        best_iteration=booster.current_iteration(),
        effective_params=effective,
        rows_used=table.rows_used,
        rows_dropped_missing_target=table.rows_dropped_missing_target,
        validation_rows=0,
        dropped_columns=table.dropped_columns,
        importance=dict(sorted(importance.items(), key=lambda item: -item[1])),
        input_example=table.input_example,
        timings={"final_model_seconds": time.perf_counter() - started},
    )


def replay_refit(
    frame: pd.DataFrame,
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    hooks: TrainingHooks | None = None,
    rows_dropped_missing_target: int = 0,
    validation: str = "",
) -> TrainingResult:
    """A replay of a searched job: its recorded final configuration scored on the same
    folds or holdout (the same seed: the job's metrics again) and refit on every row."""
    hooks = hooks or NoHooks()
    table = prepare_table(
        frame, columns, target, requested_task, config, rows_dropped_missing_target
    )
    del frame
    hooks.decided(table.decision)
    plan = plan_search(table, params, config, validation=validation)
    outcome = _Searcher(table, plan, config, SearchSpec(None, 1), _Quiet(hooks)).run()
    result = final_model(table, outcome, config, hooks)
    best = outcome.trials[outcome.best_trial]
    result.metrics = _mean_metrics(best.fold_metrics)
    result.curve = best.curve
    result.validation_rows = table.rows_used if plan.validation == "cv" else len(plan.folds[0][1])
    keep_held_out(result, table, outcome, target)
    return result


def keep_held_out(
    result: TrainingResult, table: PreparedTable, outcome: SearchOutcome, target: str
) -> None:
    """The evaluation report, and the rows the champion is compared on, from the best
    configuration's held-out predictions.

    The registered model is refit on every row, so no row is left to judge it by;
    what the job's metrics judge is the configuration, by the fold models that
    each left some rows out. The report is drawn from the same predictions: every
    row (cross-validation) or every holdout row, predicted by the fold model that
    did not train on it, so its figures agree with the job's metrics. The same rows
    as read are kept for the champion (`tracking/same_rows.py`): it is scored on
    them and compared with these predictions' pooled metrics (`held_out_metrics`)."""
    rows, raw = outcome.held_out_rows, outcome.held_out_raw
    if rows is None or raw is None:
        return
    task = table.decision.task
    labels = np.asarray(table.labels[rows])
    class_names = [pyfunc_model.label_text(label) for label in table.decision.class_labels]
    result.evaluation = evaluation_report(task, labels, raw, class_names)
    if table.rows is not None:
        result.valid_inputs = table.rows.iloc[rows].drop(columns=[target])
        result.valid_labels = labels
        result.held_out_metrics = evaluate(task, labels, raw)


class _Quiet(NoSearchHooks):
    """Stop checks and progress of a replay's scoring, without trial reports."""

    def __init__(self, hooks: TrainingHooks) -> None:
        self._hooks = hooks

    def check(self) -> None:
        self._hooks.check()

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        self._hooks.progress(iteration, total, metric_name, value)
