"""Training on a Dask cluster with `lightgbm.dask`, the Trainer staying the only MLflow client.

The Trainer never holds the rows. It asks the Dask workers to read the dataset's
Parquet row groups themselves (one partition each, through the read-only URL
the Dataset service gave out), in two passes:

1. **Summaries.** Each worker summarises its row groups (rows with a target,
   target values and counts, per column: present values, min / max, distinct
   values or levels, order). From them the Trainer decides the task, the
   features and their levels with the same rules as on one node
   (`model/targets.py`, `model/columns.py`), and builds the model's spec.
2. **Features.** Each worker turns its row groups into features with the model's
   own preprocessing and that spec (so every worker's categories have the
   codes Predict uses), and holds out a seeded 20% of each class of each row
   group for validation. The partitions are persisted on the workers.

`DaskLGBMClassifier` / `DaskLGBMRegressor` then trains with LightGBM's own
distributed learner, for the bounded-work number of rounds (no early stopping:
each worker sees only its own validation rows, and workers that stopped at
different rounds would wait on each other). The validation rows are scored on
the workers; the Trainer gathers predictions and labels (16 bytes a row) and
computes the job's metrics.

Stopping: every worker checks the job's Dask `Event` at every iteration; the
Trainer sets it on cancel, deadline or shutdown and stops waiting at once. A
worker that leaves the cluster mid-job raises `DaskUnavailable`
(`DASK_WORKER_LOST`): the job is tried again, and fails with that reason on its
last attempt. The Trainer's client is closed in every case, which cancels
whatever the job left on the cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from services.training import reasons
from services.training.fit import dask_parts
from services.training.fit.dask_parts import PartSummary, SplitRule
from services.training.fit.pipeline import (
    MIN_TRAINING_ROWS,
    PipelineConfig,
    RowCounts,
    TrainingHooks,
    TrainingResult,
    check_params_for_task,
    evaluate,
    lightgbm_params_for,
)
from services.training.model import pyfunc_model
from services.training.model.columns import (
    ID_LIKE_DISTINCT_SHARE,
    MIN_ROWS_FOR_ID,
    ColumnInfo,
    ColumnType,
    datetime_feature,
    identifier_name,
    raw_example,
)
from services.training.model.params import ParamValue
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.targets import (
    PRIMARY_METRICS,
    Task,
    TaskDecision,
    TrainingFailure,
    check_class_counts,
    decide_task,
    json_label,
)

logger = logging.getLogger("modelyard.trainer.dask")

_POLL_SECONDS = 0.5
# How long a training that failed on a peer's socket error waits for the scheduler to
# report a lost worker (it notices a killed process within a second or two).
_PEER_LOSS_WAIT_SECONDS = 5.0
_PEER_ERROR_MARKS = ("Socket recv error", "Socket send error", "Connection reset by peer")
_NOT_READ = (ColumnType.ALL_NULL,)
# Iteration counts at which the validation split is scored to pick the best one.
VALIDATION_POINTS = 10
# LightGBM's network time-out (minutes, its smallest unit): how long a worker whose
# peers stopped (stop event, lost worker) waits before giving up and freeing its
# thread; the default of MODELYARD_TRAINER_DASK_NETWORK_TIMEOUT_MINUTES.
NETWORK_TIMEOUT_MINUTES = 2
# After a job stops mid-training, how long its training parts get to end on their own
# before the workers still running one are restarted (see `_free_stuck_workers`).
STUCK_PART_GRACE_SECONDS = 2.0
RESTART_TIMEOUT_SECONDS = 30.0
TRAIN_PART_PREFIX = "_train_part"


class DaskUnavailable(Exception):
    """The cluster could not be reached, or lost a worker mid-job; the job can be tried again."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DaskTarget:
    scheduler_address: str
    connect_timeout_seconds: float = 30.0
    network_timeout_minutes: int = NETWORK_TIMEOUT_MINUTES


@dataclass(frozen=True)
class ParquetSource:
    url: str
    columns: list[ColumnInfo]


def train_on_dask(
    cluster: DaskTarget,
    source: ParquetSource,
    target: str,
    requested_task: Task,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    hooks: TrainingHooks,
    job_key: str,
) -> TrainingResult:
    """The pipeline of `pipeline.train_model`, on the cluster; raises as it does, and
    DaskUnavailable."""
    from distributed import Client

    try:
        client = Client(
            cluster.scheduler_address,
            timeout=cluster.connect_timeout_seconds,
            set_as_default=False,
        )
    except (OSError, TimeoutError) as error:
        raise DaskUnavailable(
            reasons.DASK_UNAVAILABLE, f"the Dask scheduler did not answer: {error}"
        ) from error
    try:
        job = _DaskJob(
            client, source, target, config, hooks, job_key, cluster.network_timeout_minutes
        )
        return job.run(requested_task, params)
    finally:
        client.close()


class _DaskJob:
    def __init__(
        self,
        client: Any,
        source: ParquetSource,
        target: str,
        config: PipelineConfig,
        hooks: TrainingHooks,
        job_key: str,
        network_timeout_minutes: int = NETWORK_TIMEOUT_MINUTES,
    ) -> None:
        self.client = client
        self.source = source
        self.target = target
        self.config = config
        self.hooks = hooks
        self.key = f"modelyard-{job_key}-{uuid.uuid4().hex[:8]}"
        self.workers = set(client.ncores())
        if not self.workers:
            raise DaskUnavailable(reasons.DASK_UNAVAILABLE, "the Dask cluster has no worker")
        self.timings: dict[str, float] = {}
        self.network_timeout_minutes = network_timeout_minutes
        self.training_parts: set[str] = set()  # lightgbm.dask's task keys for this job

    def run(self, requested_task: Task, params: dict[str, ParamValue]) -> TrainingResult:
        started = time.perf_counter()
        by_name = {column.name: column for column in self.source.columns}
        schema: pa.Schema = self._wait(
            self.client.submit(dask_parts.table_schema, self.source.url, pure=False)
        )
        # All-missing columns are not read.
        names = [
            name
            for name in schema.names
            if name in by_name and (by_name[name].type not in _NOT_READ or name == self.target)
        ]
        groups: list[int] = self._wait(
            self.client.submit(dask_parts.row_group_rows, self.source.url, pure=False)
        )
        summaries: list[PartSummary] = self._wait(
            self.client.map(
                dask_parts.summarize_part,
                [self.source.url] * len(groups),
                range(len(groups)),
                [names] * len(groups),
                [self.target] * len(groups),
                pure=False,
            )
        )
        decision, spec, dropped, rows, rows_dropped = decide(
            summaries, self.source.columns, self.target, requested_task, self.config
        )
        check_params_for_task(params, decision.task)
        self.timings["prepare_seconds"] = time.perf_counter() - started
        self.hooks.decided(decision)
        self.hooks.check()
        started = time.perf_counter()
        result = self._fit(
            names, len(groups), decision, spec, dropped, rows, rows_dropped, summaries, params
        )
        result.timings.update(self.timings, train_seconds=time.perf_counter() - started)
        return result

    def _fit(
        self,
        names: list[str],
        partitions: int,
        decision: TaskDecision,
        spec: FeatureSpec,
        dropped: list[tuple[str, str]],
        rows: int,
        rows_dropped: int,
        summaries: list[PartSummary],
        params: dict[str, ParamValue],
    ) -> TrainingResult:
        import dask.dataframe as dd
        from dask.delayed import delayed

        split = SplitRule(self.config.validation_fraction, self.config.seed)
        load = delayed(dask_parts.load_part, nout=4, pure=True)
        parts = [
            load(self.source.url, group, names, self.target, spec, decision, split)
            for group in range(partitions)
        ]
        meta = dask_parts.empty_features(spec)
        label_meta = pd.Series([], dtype="float64" if decision.task == Task.REGRESSION else "int64")
        x_train = dd.from_delayed([part[0] for part in parts], meta=meta, verify_meta=False)
        y_train = dd.from_delayed([part[1] for part in parts], meta=label_meta, verify_meta=False)
        x_valid = dd.from_delayed([part[2] for part in parts], meta=meta, verify_meta=False)
        y_valid = dd.from_delayed([part[3] for part in parts], meta=label_meta, verify_meta=False)
        x_train, y_train, x_valid, y_valid = self.client.persist(
            [x_train, y_train, x_valid, y_valid]
        )
        train_rows = int(self._wait(self.client.compute(y_train.shape[0])))
        valid_rows = int(self._wait(self.client.compute(y_valid.shape[0])))
        if train_rows < MIN_TRAINING_ROWS or valid_rows == 0:
            raise TrainingFailure(
                reasons.DATASET_TOO_SMALL, "too few rows to hold out a validation split"
            )
        spec["ranges"] = self._training_ranges(x_train, spec)
        counts = RowCounts(train_rows, valid_rows, len(pyfunc_model.feature_names(spec)))
        chosen, rounds, _ = lightgbm_params_for(params, decision, counts, self.config)
        chosen.pop("num_threads", None)  # each worker uses its own threads
        chosen["time_out"] = self.network_timeout_minutes
        model = self._model(decision, chosen, rounds)
        callback = dask_parts.JobCallback(f"{self.key}-stop", f"{self.key}-progress", rounds)
        fit_kwargs: dict[str, Any] = {"callbacks": [callback]}
        if params.get("class_weight") == "balanced":
            model.set_params(class_weight="balanced")
        self._train(model, x_train, y_train, fit_kwargs, rounds)
        booster = model.booster_
        booster.pandas_categorical = [
            feature["categories"]
            for feature in spec["features"]
            if feature["kind"] == pyfunc_model.CATEGORICAL
        ]
        self.hooks.check()
        labels = np.asarray(self._wait(self.client.compute(y_valid)))
        best, metrics, curve = self._best_iteration(model, x_valid, labels, decision, rounds)
        importance = dict(
            zip(
                pyfunc_model.feature_names(spec),
                (float(gain) for gain in booster.feature_importance("gain", iteration=best)),
                strict=True,
            )
        )
        effective: dict[str, ParamValue] = {
            key: value
            for key, value in chosen.items()
            if key not in ("metric", "verbosity", "time_out")
        }
        effective |= {"num_iterations": rounds, "early_stopping_round": 0}
        self.timings["validation_points"] = float(len(curve))
        if "class_weight" in params:
            effective["class_weight"] = params["class_weight"]
        example = raw_example(pd.concat([s.head for s in summaries[:1]]), spec)
        return TrainingResult(
            decision=decision,
            spec=spec,
            booster=booster,
            metrics=metrics,
            curve={},
            best_iteration=best,
            effective_params=effective,
            rows_used=rows,
            rows_dropped_missing_target=rows_dropped,
            validation_rows=valid_rows,
            dropped_columns=dropped,
            importance=dict(sorted(importance.items(), key=lambda item: -item[1])),
            input_example=example,
            engine={
                "engine": "dask",
                "dask_workers": str(len(self.workers)),
                "dask_partitions": str(partitions),
                "dask_partitioning": "one partition per Parquet row group",
                "dask_scheduler": str(self.client.scheduler.address),
            },
        )

    def _training_ranges(self, x_train: Any, spec: FeatureSpec) -> dict[str, list[float]]:
        """Each numeric feature's smallest and largest training value, reduced on the
        workers, so that Predict flags out-of-range numbers as for a model trained on one node."""
        numeric = [f["name"] for f in spec["features"] if f["kind"] == pyfunc_model.NUMERIC]
        if not numeric:
            return {}
        columns = x_train[numeric]
        lows, highs = self._wait(self.client.compute([columns.min(), columns.max()]))
        return {
            name: [float(lows[name]), float(highs[name])]
            for name in numeric
            if pd.notna(lows[name])
        }

    def _model(self, decision: TaskDecision, chosen: dict[str, Any], rounds: int) -> Any:
        import lightgbm.dask as lgb_dask

        chosen = dict(chosen)
        chosen.pop("num_class", None)
        objective = chosen.pop("objective")
        factory = (
            lgb_dask.DaskLGBMRegressor
            if decision.task == Task.REGRESSION
            else lgb_dask.DaskLGBMClassifier
        )
        return factory(client=self.client, objective=objective, n_estimators=rounds, **chosen)

    def _train(self, model: Any, x: Any, y: Any, fit_kwargs: dict[str, Any], rounds: int) -> None:
        """`model.fit` in a helper thread, while this one watches the job and the cluster."""
        from distributed import Event, Variable

        stop = Event(f"{self.key}-stop", client=self.client)
        progress = Variable(f"{self.key}-progress", client=self.client)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dask-fit") as pool:
            fitting = pool.submit(self._fit_with_client, model, x, y, fit_kwargs)
            try:
                self._watch(fitting, lambda: _progress(progress), rounds)
            except BaseException:
                with contextlib.suppress(Exception):
                    stop.set()
                with contextlib.suppress(Exception):
                    self._free_stuck_workers()
                # Closing the client cancels what the job left on the cluster, and so
                # ends the helper thread's wait; it is not waited for here.
                pool.shutdown(wait=False, cancel_futures=True)
                self.client.close()
                raise
            with contextlib.suppress(Exception):
                progress.delete()

    def _fit_with_client(self, model: Any, x: Any, y: Any, fit_kwargs: dict[str, Any]) -> None:
        # lightgbm.dask waits on the default client: this job's, in this thread only.
        with self.client.as_current():
            model.fit(x, y, **fit_kwargs)

    def _watch(
        self,
        fitting: concurrent.futures.Future[Any],
        iteration: Callable[[], int],
        rounds: int,
    ) -> None:
        reported = 0
        while True:
            self._note_training_parts()
            self.hooks.check()
            self._check_workers()
            done = iteration()
            if done > reported:
                reported = done
                self.hooks.progress(done, rounds, "", 0.0)
            try:
                fitting.result(timeout=_POLL_SECONDS)
                return
            except concurrent.futures.TimeoutError:
                continue
            except Exception as error:
                self._check_workers_after(error)
                raise DaskUnavailable(
                    reasons.DASK_TRAINING_FAILED,
                    f"distributed training failed: {type(error).__name__}: {error}",
                ) from error

    def _note_training_parts(self) -> None:
        self.training_parts |= {
            str(key) for key in list(self.client.futures) if str(key).startswith(TRAIN_PART_PREFIX)
        }

    def _free_stuck_workers(self) -> None:
        """Restart the workers still running one of this job's training parts once the
        job has stopped.

        A LightGBM worker that raised (stop event, error) leaves its peers blocked in a
        collective until LightGBM's network time-out (minutes), and every job after it
        waits behind them: a suite run's next job started 61 s late. Only a part whose
        peers all saw the stop at the same iteration ends on its own; a thread blocked in
        LightGBM's sockets cannot be interrupted, so its worker process is restarted (its
        nanny starts a new one in seconds). The job's other workers are restarted with
        it: their LightGBM network still points at the stuck one, and a suite run's next
        training on them failed with "Socket send error, Broken pipe".
        """
        self._note_training_parts()
        deadline = time.monotonic() + STUCK_PART_GRACE_SECONDS
        while stuck := self._workers_running(self.training_parts):
            if time.monotonic() >= deadline:
                restarted = sorted(stuck | (self.workers & set(self.client.ncores())))
                logger.warning(
                    "restarting Dask workers held by a stopped job's training",
                    extra={"workers": restarted, "stuck": sorted(stuck)},
                )
                self.client.restart_workers(
                    restarted, timeout=RESTART_TIMEOUT_SECONDS, raise_for_error=False
                )
                return
            time.sleep(_POLL_SECONDS / 5)

    def _workers_running(self, parts: set[str]) -> set[str]:
        if not parts:
            return set()
        running: dict[str, list[str]] = self.client.run(dask_parts.executing_keys)
        return {worker for worker, keys in running.items() if parts.intersection(keys)}

    def _check_workers_after(self, error: Exception) -> None:
        """A peer's socket error is how the surviving workers see a killed one, often
        before the scheduler has dropped it (a suite run saw DASK_TRAINING_FAILED
        'Socket recv error, Connection reset by peer' for a killed worker): give the
        scheduler a few seconds to say so before calling it a training failure."""
        deadline = time.monotonic() + (_PEER_LOSS_WAIT_SECONDS if _is_peer_error(error) else 0)
        while True:
            self._check_workers()
            if time.monotonic() >= deadline:
                return
            time.sleep(_POLL_SECONDS / 5)

    def _check_workers(self) -> None:
        lost = self.workers - set(self.client.ncores())
        if lost:
            raise DaskUnavailable(
                reasons.DASK_WORKER_LOST,
                f"Dask worker(s) {', '.join(sorted(lost))} left the cluster during the job",
            )

    def _wait(self, futures: Any) -> Any:
        """The result of cluster work, checking the job's stop flag and the workers meanwhile."""
        pending = list(futures) if isinstance(futures, list) else [futures]
        while True:
            self.hooks.check()
            self._check_workers()
            pending = [future for future in pending if not future.done()]
            if not pending:
                break
            time.sleep(_POLL_SECONDS / 5)
        try:
            return self.client.gather(futures)
        except (OSError, ValueError) as error:
            raise TrainingFailure(
                reasons.DATASET_READ_FAILED, f"a Dask worker could not read the dataset: {error}"
            ) from error

    def _best_iteration(
        self,
        model: Any,
        x_valid: Any,
        labels: np.ndarray[Any, Any],
        decision: TaskDecision,
        rounds: int,
    ) -> tuple[int, dict[str, float], dict[int, float]]:
        """Early stopping after the fact: the validation split scored at a few iteration
        counts (on the workers), the best by the task's primary metric kept.

        In-training early stopping cannot work here (each worker would judge on its own
        validation rows); this costs about `VALIDATION_POINTS / 2` scorings of the split.
        """
        primary = PRIMARY_METRICS[decision.task]
        points = sorted(
            {
                max(1, round(rounds * step / VALIDATION_POINTS))
                for step in range(1, VALIDATION_POINTS + 1)
            }
        )
        best: tuple[float, int, dict[str, float]] | None = None
        curve: dict[int, float] = {}
        for iterations in points:
            raw = self._scores(model, x_valid, decision, iterations)
            metrics = evaluate(decision.task, labels, raw)
            value = metrics[primary.name]
            curve[iterations] = value
            score = value if primary.higher_is_better else -value
            if best is None or score > best[0]:
                best = (score, iterations, metrics)
        assert best is not None
        return best[1], best[2], curve

    def _scores(
        self, model: Any, x_valid: Any, decision: TaskDecision, iterations: int
    ) -> np.ndarray[Any, Any]:
        if decision.task == Task.REGRESSION:
            predicted = model.predict(x_valid, num_iteration=iterations)
            return np.asarray(self._wait(self.client.compute(predicted)))
        predicted = model.predict_proba(x_valid, num_iteration=iterations)
        probabilities = np.asarray(self._wait(self.client.compute(predicted)))
        return probabilities[:, 1] if decision.task == Task.BINARY else probabilities


def _is_peer_error(error: Exception) -> bool:
    text = str(error)
    return any(mark in text for mark in _PEER_ERROR_MARKS)


def _progress(variable: Any) -> int:
    try:
        return int(variable.get(timeout=0.05))
    except (TimeoutError, ValueError, TypeError):
        return 0


# -- the decisions of `pipeline.prepare`, from summaries -------------------------------------


def decide(
    summaries: list[PartSummary],
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    config: PipelineConfig,
) -> tuple[TaskDecision, FeatureSpec, list[tuple[str, str]], int, int]:
    """Task, spec, columns left out, rows used and rows dropped, from the part summaries."""
    by_name = {column.name: column for column in columns}
    if target not in by_name:
        raise TrainingFailure(
            reasons.TARGET_COLUMN_NOT_FOUND,
            f"the dataset has no column {target!r}",
            invalid_argument=True,
        )
    rows = sum(summary.rows for summary in summaries)
    rows_dropped = sum(summary.rows_dropped_missing_target for summary in summaries)
    if rows == 0:
        raise TrainingFailure(reasons.TARGET_ALL_MISSING, f"every value of {target!r} is missing")
    counts = _target_counts(summaries)
    target_type = by_name[target].type
    decision = decide_task(
        _distinct_series(counts, target_type), target_type, requested_task, config.max_classes
    )
    if rows < MIN_TRAINING_ROWS:
        raise TrainingFailure(
            reasons.DATASET_TOO_SMALL,
            f"{rows} rows with a target; at least {MIN_TRAINING_ROWS} are needed",
        )
    if decision.task != Task.REGRESSION:
        assert counts is not None  # a classification has few enough labels to count
        by_label = {
            pyfunc_model.label_text(_label(value)): count for value, count in counts.items()
        }
        class_counts = [by_label.get(name, 0) for name in decision.class_names]
        check_class_counts(class_counts, decision, config.min_rows_per_class)
    features, dropped = _features(summaries, columns, target)
    if not features:
        detail = ", ".join(f"{name} ({why})" for name, why in dropped) or "none"
        raise TrainingFailure(
            reasons.NO_USABLE_FEATURES,
            f"no column besides the target can be used as a feature; left out: {detail}",
        )
    spec: FeatureSpec = {
        "format_version": pyfunc_model.FORMAT_VERSION,
        "task": decision.task.value.lower(),
        "target_column": target,
        "features": features,
        "class_labels": [json_label(label) for label in decision.class_labels],
        "dropped_columns": [{"name": name, "reason": why} for name, why in dropped],
    }
    return decision, spec, dropped, rows, rows_dropped


def _target_counts(summaries: list[PartSummary]) -> dict[Any, int] | None:
    total: dict[Any, int] = {}
    for summary in summaries:
        if summary.target_counts is None:
            return None
        for value, count in summary.target_counts.items():
            total[value] = total.get(value, 0) + count
        if len(total) > dask_parts.MAX_TARGET_VALUES:
            return None
    return total


def _label(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _distinct_series(counts: dict[Any, int] | None, column_type: ColumnType) -> pd.Series[Any]:
    """The target's distinct values, as decide_task reads them; past the cap, a sample of
    more values than any classification may have, so that the decision is the same."""
    if counts is None:
        values: list[Any] = list(np.linspace(0.5, 1.5, dask_parts.MAX_TARGET_VALUES + 1))
        if column_type not in (ColumnType.INTEGER, ColumnType.FLOAT):
            values = [f"value-{index}" for index in range(len(values))]
        return pd.Series(values)
    if column_type in (ColumnType.INTEGER, ColumnType.FLOAT):
        return pd.Series(list(counts), dtype="float64")
    return pd.Series(list(counts), dtype="object")


def _features(
    summaries: list[PartSummary], columns: list[ColumnInfo], target: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """`columns.select_features`'s rules over summaries; see the module's README section."""
    features: list[dict[str, Any]] = []
    dropped: list[tuple[str, str]] = []
    for column in columns:
        if column.name == target:
            continue
        parts = [summary.columns.get(column.name) for summary in summaries]
        why = _why_dropped(column, parts)
        if why:
            dropped.append((column.name, why))
        elif column.type == ColumnType.STRING:
            levels: set[str] = set()
            for part in parts:
                assert part is not None
                assert part.levels is not None
                levels |= {str(level) for level in part.levels}
            features.append(
                {
                    "name": column.name,
                    "kind": pyfunc_model.CATEGORICAL,
                    "categories": sorted(levels),
                }
            )
        elif column.type == ColumnType.BOOLEAN:
            features.append({"name": column.name, "kind": pyfunc_model.BOOLEAN})
        elif column.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
            features.append(datetime_feature(column))
        else:
            features.append({"name": column.name, "kind": pyfunc_model.NUMERIC})
    return features, dropped


def _why_dropped(column: ColumnInfo, parts: list[dask_parts.ColumnSummary | None]) -> str | None:
    if column.row_number:
        return "row_number"
    if column.type == ColumnType.ALL_NULL:
        return "all_null"
    if any(part is None for part in parts):
        return "not_read"
    present_parts = [part for part in parts if part is not None and part.present]
    present = sum(part.present for part in present_parts)
    if not present:
        return "all_null"
    if column.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
        # Summarised as seconds since 1970: one moment throughout is a constant.
        if min(p.minimum for p in present_parts) == max(p.maximum for p in present_parts):
            return "constant"
        return None
    if column.type in (ColumnType.INTEGER, ColumnType.FLOAT):
        if min(p.minimum for p in present_parts) == max(p.maximum for p in present_parts):
            return "constant"
        if column.type == ColumnType.INTEGER and _integer_id(present_parts, column.name, present):
            return "id_like"
        return None
    if any(part.levels is None for part in present_parts):
        return "id_like"  # more distinct values than a part reports: an identifier
    distinct: set[Any] = set()
    for part in present_parts:
        assert part.levels is not None
        distinct |= part.levels
    if len(distinct) <= 1:
        return "constant"
    if column.type == ColumnType.STRING and (
        column.id_like or len(distinct) >= ID_LIKE_DISTINCT_SHARE * present
    ):
        return "id_like"
    return None


def _integer_id(parts: list[dask_parts.ColumnSummary], name: str, present: int) -> bool:
    """Every value distinct (within parts, and their ranges apart), counting or id-named."""
    if present < MIN_ROWS_FOR_ID or sum(part.distinct_count for part in parts) != present:
        return False
    increasing = all(part.increasing for part in parts) and all(
        before.last < after.first for before, after in itertools.pairwise(parts)
    )
    decreasing = all(part.decreasing for part in parts) and all(
        before.last > after.first for before, after in itertools.pairwise(parts)
    )
    if increasing or decreasing:
        return True
    ranges = sorted((part.minimum, part.maximum) for part in parts)
    apart = all(low_next > high for (_, high), (low_next, _) in itertools.pairwise(ranges))
    return apart and identifier_name(name)
