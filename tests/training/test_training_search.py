"""The search (fit/search.py) on real and generated tables: what it tries, what it
keeps, that its model is one ordinary LightGBM model, that a seed and max_trials
replay to the byte, and how it stops (trials, budget, deadline, cancel)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.training.fit.estimate import CostBook, Measurement, TableShape, estimate
from services.training.fit.pipeline import (
    PipelineConfig,
    TrainingResult,
    TrainingStopped,
    prepare_table,
)
from services.training.fit.search import (
    CV_FOLDS,
    CV_REPEAT_ROWS,
    CV_REPEATS,
    NoSearchHooks,
    SearchSpec,
    SearchStatus,
    TrialRecord,
    _Searcher,
    plan_search,
    portfolio,
    replay_refit,
    search_model,
    typed_param,
)
from services.training.model import pyfunc_model
from services.training.model.columns import columns_from_frame
from services.training.model.params import as_strings
from services.training.model.targets import Task, TrainingFailure
from services.training.tracking.trials import leaderboard, leaderboard_chart
from tests.training.training_support import messy_frame

CONFIG = PipelineConfig(num_threads=2)


def counts_frame(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    """Visits per person: a count target driven by two features."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(float)
    chronic = rng.random(rows) < 0.3
    region = rng.choice(["north", "south", "east"], rows)
    rate = np.exp(0.8 + age / 40 + 0.9 * chronic + (region == "north") * 0.4)
    return pd.DataFrame(
        {"age": age, "chronic": chronic, "region": region, "visits": rng.poisson(rate)}
    )


def imbalanced_frame(rows: int = 500, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    score = x[:, 0] * 1.5 - x[:, 1] + rng.normal(0, 0.8, rows)
    fraud = np.where(score > np.quantile(score, 0.9), "fraud", "ok")
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": fraud})


def run_search(
    frame: pd.DataFrame,
    target: str,
    search: SearchSpec,
    params: dict[str, Any] | None = None,
    hooks: Any = None,
    config: PipelineConfig = CONFIG,
) -> TrainingResult:
    columns = columns_from_frame(frame)
    return search_model(frame, columns, target, Task.AUTO, params or {}, config, search, hooks)


class Recorder(NoSearchHooks):
    def __init__(self, stop_after: int | None = None, why: str = "deadline") -> None:
        self.trials: list[TrialRecord] = []
        self.statuses: list[SearchStatus] = []
        self._stop_after = stop_after
        self._why = why

    def trial_finished(self, trial: TrialRecord, status: SearchStatus) -> None:
        self.trials.append(trial)
        self.statuses.append(status)

    def check(self) -> None:
        if self._stop_after is not None and len(self.trials) >= self._stop_after:
            raise TrainingStopped(self._why)


@pytest.fixture(scope="module")
def count_search() -> tuple[TrainingResult, Recorder]:
    """One search of a count target, shared by the tests that only read it."""
    hooks = Recorder()
    return run_search(counts_frame(), "visits", SearchSpec(None, 8), hooks=hooks), hooks


def test_a_count_target_tries_poisson_and_tweedie_and_records_the_choice(
    count_search: tuple[TrainingResult, Recorder],
) -> None:
    result, hooks = count_search
    outcome = result.search
    assert outcome is not None
    assert outcome.objectives_considered[:3] == ["regression", "poisson", "tweedie"]
    assert "count target" in outcome.objectives_considered[-1]
    # The first trials are the default configuration with each objective.
    assert [t.objective for t in outcome.trials[:3]] == ["regression", "poisson", "tweedie"]
    assert outcome.objective == outcome.trials[outcome.best_trial].objective
    assert result.effective_params["objective"] == outcome.objective
    assert outcome.validation == "cv"
    assert (outcome.folds, outcome.fold_repeats) == (CV_FOLDS, CV_REPEATS)  # 400 rows
    assert len(outcome.trials) == 8
    assert outcome.stopped_by == "max_trials"
    # The job's metrics are the best trial's cross-validated means, with their spread.
    best = outcome.trials[outcome.best_trial]
    assert result.metrics["rmse"] == pytest.approx(best.metric_value)
    assert result.metrics["rmse"] == pytest.approx(np.mean(best.fold_metric_values))
    assert outcome.metric_std["rmse"] == pytest.approx(np.std(best.fold_metric_values))
    assert set(result.metrics) == {"rmse", "mae", "r2", "mse"}
    # Every trial was reported, with the best so far marked when it improved.
    assert [t.number for t in hooks.trials] == list(range(8))
    assert hooks.trials[0].best_so_far
    assert hooks.statuses[-1].trials_done == 8


def test_the_portfolio_is_tried_after_the_default_with_the_best_objective(
    count_search: tuple[TrainingResult, Recorder],
) -> None:
    """Known-good configurations (AutoGluon's LightGBM models, FLAML's zero-shot ones)
    come before the optimiser's proposals, each a recorded trial like any other."""
    outcome = count_search[0].search
    assert outcome is not None
    defaults = outcome.trials[:3]
    best_default = min(defaults, key=lambda trial: trial.metric_value)  # rmse
    entries = portfolio(Task.REGRESSION)
    tried = outcome.trials[3 : 3 + len(entries)]
    assert len(tried) == 5 == len(entries)
    for trial, entry in zip(tried, entries, strict=True):
        assert trial.objective == best_default.objective
        for name, value in entry.params.items():
            expected = min(value, 32) if name == "min_data_in_leaf" else value  # 320 rows / 10
            assert typed_param(trial.params[name]) == expected, (entry.source, name)
    assert tried[1].params["extra_trees"] == "true"  # AutoGluon's GBMXT
    assert all(trial.params["extra_trees"] == "false" for trial in defaults)


def test_many_level_categoricals_search_how_levels_are_grouped() -> None:
    rng = np.random.default_rng(7)
    shops = [f"shop-{i}" for i in range(60)]
    effect = dict(zip(shops, rng.normal(0, 30, len(shops)), strict=True))
    shop = rng.choice(shops, 600)
    frame = pd.DataFrame({"shop": shop, "x": rng.normal(size=600)})
    frame["sales"] = 100 + np.vectorize(effect.get)(shop) + 5 * frame["x"] + rng.normal(0, 5, 600)
    outcome = run_search(frame, "sales", SearchSpec(None, 2)).search
    assert outcome is not None
    default, grouped = outcome.trials
    assert default.params["min_data_per_group"] == "100"  # LightGBM's default first
    assert grouped.params["min_data_per_group"] == "5"  # then the many-levels entry
    assert grouped.params["max_cat_threshold"] == "256"
    # Small groups of levels find the 60 shops' effects the defaults smooth away.
    assert grouped.metric_value < 0.8 * default.metric_value
    # Without such a column (count_search's region has 3 levels) they are not searched.
    few = run_search(counts_frame(), "visits", SearchSpec(None, 1)).search
    assert few is not None
    assert "min_data_per_group" not in few.trials[0].params


def test_the_budget_rule_counts_rows_times_features_whatever_the_classes() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(3000, 10)), columns=[f"f{i}" for i in range(10)])
    frame["label"] = rng.choice([f"c{i}" for i in range(8)], 3000)
    table = prepare_table(frame, columns_from_frame(frame), "label", Task.AUTO, CONFIG)
    # 3,000 rows x 10 features do not fit 10 s of budget (27,800 cells) but fit 60 s
    # (167,000); the 8 classes (8 trees a round) do not push 60 s onto a holdout.
    assert plan_search(table, {}, CONFIG, budget_seconds=10.0).validation == "holdout"
    assert plan_search(table, {}, CONFIG, budget_seconds=60.0).validation == "cv"


def test_a_small_table_is_scored_on_the_folds_drawn_again_with_other_seeds() -> None:
    few = counts_frame(rows=400)
    table = prepare_table(few, columns_from_frame(few), "visits", Task.AUTO, CONFIG)
    folds = plan_search(table, {}, CONFIG).folds
    assert len(folds) == CV_FOLDS * CV_REPEATS
    draws = [folds[n * CV_FOLDS : (n + 1) * CV_FOLDS] for n in range(CV_REPEATS)]
    for draw in draws:  # each draw holds every row out once
        held_out = np.sort(np.concatenate([valid for _, valid in draw]))
        assert held_out.tolist() == list(range(400))
    assert not np.array_equal(draws[0][0][1], draws[1][0][1])  # another shuffle
    many = counts_frame(rows=CV_REPEAT_ROWS)
    table = prepare_table(many, columns_from_frame(many), "visits", Task.AUTO, CONFIG)
    assert len(plan_search(table, {}, CONFIG).folds) == CV_FOLDS


def test_a_trial_must_beat_the_best_on_the_folds_by_more_than_chance() -> None:
    """Cross-validation: a new best must be better by more than a standard error of its
    per-fold differences from the best so far, not by a lucky fold."""
    frame = counts_frame()
    table = prepare_table(frame, columns_from_frame(frame), "visits", Task.AUTO, CONFIG)
    plan = plan_search(table, {}, CONFIG)
    searcher = _Searcher(table, plan, CONFIG, SearchSpec(None, 1), NoSearchHooks())

    def trial(number: int, folds: list[float]) -> TrialRecord:
        return TrialRecord(
            number,
            "COMPLETE",
            {},
            "regression",
            "rmse",
            float(np.mean(folds)),
            folds,
            10,
            1.0,
            0.0,
            fold_metrics=[{"rmse": v, "mae": v} for v in folds],
        )

    searcher._trials = [trial(0, [10.0, 10.0, 10.0, 10.0, 10.0])]
    searcher._best = 0
    lucky = trial(1, [7.0, 10.5, 10.5, 10.5, 10.5])  # lower mean rmse, one lucky fold
    steady = trial(2, [9.5, 9.6, 9.4, 9.5, 9.6])  # better on every fold
    assert lucky.metric_value < 10.0
    assert not searcher._is_better(lucky)
    assert searcher._is_better(steady)


def test_the_searched_model_is_one_ordinary_lightgbm_model(
    count_search: tuple[TrainingResult, Recorder],
) -> None:
    frame = counts_frame()
    result, _ = count_search
    booster = result.booster
    features = pyfunc_model.coerce_features(frame.drop(columns=["visits"]), result.spec)
    raw = np.asarray(booster.predict(features, raw_score=True))
    contributions = np.asarray(booster.predict(features, pred_contrib=True))
    # Exact TreeSHAP: the contributions and the bias add up to the raw score.
    assert np.allclose(contributions.sum(axis=1), raw, atol=1e-6)
    output = pyfunc_model.predict_frame(booster, result.spec, features)
    assert len(output) == len(frame)
    # After cross-validation the model is the best trial's fold models averaged: each
    # fold model's trees up to its best iteration, its raw score their mean.
    outcome = result.search
    assert outcome is not None
    best = outcome.trials[outcome.best_trial]
    assert len(best.fold_rounds) == CV_FOLDS * CV_REPEATS  # 400 rows: repeated folds
    assert result.best_iteration == sum(best.fold_rounds)
    folds = [
        model.predict(features, raw_score=True, num_iteration=n) for model, n in outcome.fold_models
    ]
    assert np.allclose(raw, np.mean(folds, axis=0), atol=1e-9)
    # What a replay needs to train the fold models again: the cap and the patience.
    assert int(result.effective_params["early_stopping_round"]) > 0
    assert int(result.effective_params["num_iterations"]) >= max(best.fold_rounds)


def test_a_seed_and_max_trials_replay_to_the_same_model_file() -> None:
    frame = messy_frame(rows=300)
    params = {"seed": 11}
    first = run_search(frame.copy(), "label", SearchSpec(None, 3), params)
    second = run_search(frame.copy(), "label", SearchSpec(None, 3), params)
    assert first.model_sha256 == second.model_sha256
    assert first.model_text == second.model_text
    # What a replay trains: the recorded final configuration, from its contract strings.
    recorded = {k: typed_param(v) for k, v in as_strings(first.effective_params).items()}
    columns = columns_from_frame(frame)
    replayed = replay_refit(frame.copy(), columns, "label", Task.AUTO, recorded, CONFIG)
    assert replayed.model_sha256 == first.model_sha256
    other = run_search(frame.copy(), "label", SearchSpec(None, 3), {"seed": 12})
    assert other.model_sha256 != first.model_sha256


def test_imbalanced_classes_try_balanced_class_weights() -> None:
    result = run_search(imbalanced_frame(), "label", SearchSpec(None, 4))
    outcome = result.search
    assert outcome is not None
    assert "imbalanced classes" in outcome.objectives_considered[-1]
    assert outcome.trials[1].params["class_weight"] == "balanced"
    assert outcome.trials[0].params["class_weight"] == "none"
    assert set(result.metrics) >= {"roc_auc", "log_loss", "f1"}


def test_a_parameter_the_job_sets_is_not_searched() -> None:
    result = run_search(counts_frame(), "visits", SearchSpec(None, 4), {"num_leaves": 7})
    assert result.search is not None
    assert {t.params["num_leaves"] for t in result.search.trials} == {"7"}


def test_the_search_stops_within_its_budget() -> None:
    started = time.monotonic()
    result = run_search(messy_frame(rows=600), "label", SearchSpec(2.0, None))
    assert result.search is not None
    assert result.search.stopped_by == "budget"
    assert result.search.seconds <= 2.0 + 0.5
    assert time.monotonic() - started < 15


def test_a_slow_trial_does_not_end_a_holdout_search_early() -> None:
    """The trials stop short of the budget by what the best configuration's refit will
    take (and a trial as quick as the quickest), not by a multiple of the slowest
    trial: on digits one slow trial of 20 s ended a 60 s search at 31 s."""
    frame = counts_frame(rows=3000)
    table = prepare_table(frame, columns_from_frame(frame), "visits", Task.AUTO, CONFIG)
    plan = plan_search(table, {}, CONFIG, budget_seconds=60.0, validation="holdout")
    searcher = _Searcher(table, plan, CONFIG, SearchSpec(60.0, None), NoSearchHooks())
    fast = searcher.evaluate(searcher._default_point(plan.choices[0]), _NeverPrune())
    assert fast.state == "COMPLETE"
    assert searcher._best == 0
    slow = TrialRecord(1, "COMPLETE", {}, "regression", "rmse", 99.0, [99.0], 10, 20.0, 0.0)
    searcher._trials.append(slow)  # 20 s, not the best
    reserve = searcher._reserve
    assert 0 < reserve < 5 * fast.seconds  # the refit of the fast best, not the slow one
    searcher._deadline = time.monotonic() + reserve + fast.seconds + 1.0
    assert not searcher._budget_spent()
    searcher._deadline = time.monotonic() + reserve + fast.seconds - 0.05
    assert searcher._budget_spent()


class _NeverPrune:
    def report(self, value: float, step: int) -> None:
        return None

    def should_prune(self) -> bool:
        return False


def test_a_deadline_mid_search_keeps_the_best_so_far() -> None:
    hooks = Recorder(stop_after=3, why="deadline")
    result = run_search(counts_frame(), "visits", SearchSpec(None, 50), hooks=hooks)
    assert result.search is not None
    assert result.search.stopped_by == "deadline"
    assert len(result.search.trials) == 3
    assert result.booster.current_iteration() > 0


def test_a_cancel_mid_search_stops_it() -> None:
    hooks = Recorder(stop_after=2, why="cancelled")
    with pytest.raises(TrainingStopped) as stop:
        run_search(counts_frame(), "visits", SearchSpec(None, 50), hooks=hooks)
    assert stop.value.why == "cancelled"


def test_a_table_too_small_for_the_folds_names_its_smallest_class() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"x": rng.normal(size=60), "y": ["common"] * 40 + ["middle"] * 17 + ["rare"] * 3}
    )
    config = PipelineConfig(num_threads=2, min_rows_per_class=2)
    with pytest.raises(TrainingFailure) as error:
        run_search(frame, "y", SearchSpec(None, 3), config=config)
    assert error.value.reason == "SEARCH_TABLE_TOO_SMALL"
    assert "'rare'" in error.value.message
    assert "3 rows" in error.value.message


def test_the_leaderboard_lists_every_trial_best_first(
    tmp_path: Path, count_search: tuple[TrainingResult, Recorder]
) -> None:
    outcome = count_search[0].search
    assert outcome is not None
    board = leaderboard(outcome, higher_is_better=False)
    assert len(board["trials"]) == 8
    assert board["trials"][0]["number"] == outcome.best_trial
    rest = board["trials"][1:]
    complete = [t["metric_value"] for t in rest if t["state"] == "COMPLETE"]
    assert complete == sorted(complete)
    leaderboard_chart(outcome, False, tmp_path / "leaderboard.png")
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_the_cost_book_learns_from_jobs_and_keeps_what_it_learnt(tmp_path: Path) -> None:
    book = CostBook(tmp_path)
    shape = TableShape(rows=10_000, features=10, classes=1)
    before = estimate(book.costs, shape, 11)
    assert "no job measured" in before.basis
    book.record(
        Measurement(
            shape=shape,
            boosting_rounds=1000,
            train_rows=8000,
            train_seconds=40.0,
            wall_seconds=45.0,
            memory_growth_bytes=50e6,
            columns_read=11,
        )
    )
    again = CostBook(tmp_path)  # a restarted Trainer reads what the last one measured
    assert again.costs.jobs_measured == 1
    assert again.costs.seconds_per_cell_round > book.costs.__class__().seconds_per_cell_round
    after = estimate(again.costs, shape, 11)
    assert after.wall_seconds > before.wall_seconds
    searched = estimate(again.costs, shape, 11, search=True, budget_seconds=60.0)
    assert searched.wall_seconds >= 60.0
    assert searched.trials >= 1
    capped = estimate(again.costs, shape, 11, search=True, max_trials=7)
    assert capped.trials == 7


def test_a_short_budget_on_a_larger_table_scores_on_a_holdout() -> None:
    frame = counts_frame(rows=3000)  # 3,000 rows x 3 features
    table = prepare_table(frame, columns_from_frame(frame), "visits", Task.AUTO, CONFIG)
    assert plan_search(table, {}, CONFIG, budget_seconds=1.0).validation == "holdout"
    assert len(plan_search(table, {}, CONFIG, budget_seconds=1.0).folds) == 1
    assert plan_search(table, {}, CONFIG, budget_seconds=60.0).validation == "cv"
    assert plan_search(table, {}, CONFIG).validation == "cv"  # max_trials only
    # A replay scores as its original did, whatever the budget rule says.
    assert plan_search(table, {}, CONFIG, validation="holdout").validation == "holdout"


def test_a_search_reports_the_best_configurations_held_out_predictions(
    count_search: tuple[TrainingResult, Recorder],
) -> None:
    """The refit model has no held-out rows; the report is drawn from the predictions the
    job's metrics come from: every row, each by the fold model that did not train on it."""
    classified = run_search(imbalanced_frame(), "label", SearchSpec(None, 3))
    report = classified.evaluation
    assert report is not None
    assert report.validation_rows == classified.rows_used == 500
    assert list(report.class_names) == ["fraud", "ok"]
    counts = np.array([list(row.counts) for row in report.confusion_matrix])
    assert counts.sum() == 500
    assert counts.sum(axis=1).tolist() == [50, 450]  # every row once, in its true class
    pooled_accuracy = np.trace(counts) / counts.sum()
    assert pooled_accuracy == pytest.approx(classified.metrics["accuracy"], abs=0.02)
    assert report.roc_curve.area == pytest.approx(classified.metrics["roc_auc"], abs=0.03)
    # The same rows, as read, are what the champion will be scored on (tracking/same_rows).
    assert classified.valid_inputs is not None
    assert len(classified.valid_inputs) == 500
    assert "label" not in classified.valid_inputs.columns
    assert classified.held_out_metrics is not None
    assert classified.held_out_metrics["accuracy"] == pytest.approx(pooled_accuracy)
    regression = count_search[0].evaluation
    assert regression is not None
    assert regression.validation_rows == count_search[0].rows_used
    assert len(regression.residuals.x) > 0


def test_small_tables_fixed_costs_do_not_inflate_the_quote_of_a_larger_one(tmp_path: Path) -> None:
    """Small searches grow by a fixed ~150 MiB and spend most of a round on fixed work;
    the cost book must not read that as a per-cell rate (it once quoted 5.4 GiB for a
    job that grew by 41 MiB)."""
    book = CostBook(tmp_path)
    for rows, features in [(426, 30), (133, 13), (1347, 64), (331, 10), (600, 8)]:
        book.record(
            Measurement(
                shape=TableShape(rows=rows, features=features, classes=1),
                boosting_rounds=2000,
                train_rows=int(rows * 0.8),
                train_seconds=2000 * (2e-3 + 4e-8 * rows * features),
                wall_seconds=2000 * (2e-3 + 4e-8 * rows * features) + 2.0,
                memory_growth_bytes=150e6 + 60.0 * rows * (features + 1),
                columns_read=features + 1,
            )
        )
    small = estimate(book.costs, TableShape(1347, 64, 10), 65, search=True, budget_seconds=10)
    growth_quoted = small.peak_memory_bytes - book.costs.base_memory_bytes
    assert growth_quoted < 3 * (150e6 + 2 * 60.0 * 1347 * 65)

    large = TableShape(rows=1_000_000, features=28, classes=1)
    quoted = estimate(book.costs, large, 29)
    # The per-cell rates stay near what the jobs show (60 B a cell; 4e-8 s a cell-round).
    assert 20.0 < book.costs.bytes_per_cell < 200.0
    assert 1e-8 < book.costs.seconds_per_cell_round < 2e-7
    assert quoted.peak_memory_bytes < book.costs.base_memory_bytes + 150e6 + 3 * 60.0 * 29e6
