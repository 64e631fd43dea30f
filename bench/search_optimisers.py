"""Which optimiser drives the search: Optuna's TPE or FLAML's `tune` (BlendSearch).

    .venv/bin/python -m bench.search_optimisers [--budget 10] [--tables NAME ...]

Needs FLAML's core package in the platform's environment (`make bench-env`
installs it; it depends on numpy only). Both optimisers drive the very same
evaluation (fit/search.py's `_Searcher.evaluate`: the same folds, space,
objectives, early stopping and budget checks; trial 0 the default
configuration for both), so the only difference is which configurations they
propose: Optuna's TPE with its median pruner, or FLAML's BlendSearch (CFO's
cost-frugal local search blended with a global search) with the space's cheap
corner as its start. Printed per table: the best cross-validated score each
reached, its trials, and its test score on held-out rows.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.search import CONFIG, TABLES, Prepared, platform_score, prepare_table
from services.training.fit.pipeline import prepare_table as prepare_rows
from services.training.fit.search import (
    SearchSpec,
    _BudgetSpent,
    _Searcher,
    final_model,
    plan_search,
)
from services.training.model.columns import columns_from_frame
from services.training.model.targets import Task


class _NoPruning:
    def report(self, value: float, step: int) -> None:
        return None

    def should_prune(self) -> bool:
        return False


def flaml_search(searcher: _Searcher, budget: float) -> None:
    flaml: Any = importlib.import_module("flaml")  # a bench-only package: untyped to mypy
    tune, BlendSearch = flaml.tune, flaml.BlendSearch

    plan = searcher._plan
    space: dict[str, Any] = {
        "choice": tune.choice(list(range(len(plan.choices)))),
        "num_leaves": tune.lograndint(4, 257),
        "max_depth": tune.choice([-1, 3, 5, 8, 12]),
        "min_data_in_leaf": tune.lograndint(2, max(3, min(200, len(plan.folds[0][0]) // 10) + 1)),
        "learning_rate": tune.loguniform(0.01, 0.3),
        "feature_fraction": tune.uniform(0.4, 1.0),
        "bagging_fraction": tune.uniform(0.5, 1.0),
        "lambda_l1": tune.loguniform(1e-8, 10.0),
        "lambda_l2": tune.loguniform(1e-8, 10.0),
        "cat_smooth": tune.loguniform(1.0, 100.0),
        "max_bin": tune.choice([63, 127, 255, 511]),
    }
    defaults = [searcher._default_point(choice) for choice in plan.choices]
    blend = BlendSearch(
        metric="score",
        mode="max" if plan.higher_is_better else "min",
        space=space,
        low_cost_partial_config={"num_leaves": 4, "min_data_in_leaf": 2},
        points_to_evaluate=defaults,
        seed=plan.seed,
    )
    deadline = time.monotonic() + budget
    number = 0
    while time.monotonic() < deadline:
        trial_id = str(number)
        config = blend.suggest(trial_id)
        if config is None:
            break
        point = {k: v for k, v in config.items() if k in space}
        try:
            record = searcher.evaluate(point, _NoPruning())
        except _BudgetSpent:
            break
        score = record.metric_value if math.isfinite(record.metric_value) else None
        result = (
            None
            if score is None
            else {"score": score, "time_total_s": record.seconds, "config": config}
        )
        blend.on_trial_complete(trial_id, result, error=result is None)
        number += 1


def run(prepared: Prepared, budget: float, optimiser: str) -> tuple[float, int, float]:
    frame = prepared.train.copy()
    table = prepare_rows(frame, columns_from_frame(frame), prepared.target, Task.AUTO, CONFIG)
    plan = plan_search(table, {}, CONFIG)
    searcher = _Searcher(table, plan, CONFIG, SearchSpec(budget, None), _Silent())
    if optimiser == "optuna":
        outcome = searcher.run()
    else:
        searcher._deadline = time.monotonic() + budget
        flaml_search(searcher, budget)
        searcher._deadline = None
        outcome = searcher.run_outcome("budget")
    best = outcome.trials[outcome.best_trial]
    result = final_model(table, outcome, CONFIG)
    return best.metric_value, len(outcome.trials), platform_score(prepared, result)


class _Silent:
    def check(self) -> None:
        return None

    def decided(self, decision: Any) -> None:
        return None

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        return None

    def trial_started(self, number: int, status: Any) -> None:
        return None

    def trial_finished(self, trial: Any, status: Any) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--tables", nargs="*")
    args = parser.parse_args()
    tables = [t for t in TABLES if not args.tables or t.name.startswith(tuple(args.tables))]
    header = (
        f"{'table':31} {'metric':8} {'optuna cv':>10} {'trials':>6} {'test':>8} "
        f"{'flaml cv':>10} {'trials':>6} {'test':>8}"
    )
    print(header)
    print("-" * len(header))
    wins: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-optimisers-") as scratch:
        for index, table in enumerate(tables):
            directory = Path(scratch) / f"t{index}"
            directory.mkdir()
            prepared = prepare_table(table, directory)
            optuna_cv, optuna_n, optuna_test = run(prepared, args.budget, "optuna")
            flaml_cv, flaml_n, flaml_test = run(prepared, args.budget, "flaml")
            sign = 1.0 if prepared.task != Task.REGRESSION else -1.0
            wins.append(sign * (optuna_test - flaml_test) / max(abs(flaml_test), 1e-12))
            print(
                f"{table.name:31} {prepared.metric:8} {optuna_cv:>10.4f} {optuna_n:>6} "
                f"{optuna_test:>8.4f} {flaml_cv:>10.4f} {flaml_n:>6} {flaml_test:>8.4f}",
                flush=True,
            )
    better = sum(w > 0 for w in wins)
    print(
        f"\nOptuna's test score better on {better}/{len(wins)} tables, equal on "
        f"{sum(w == 0 for w in wins)} (mean relative difference {np.mean(wins):+.2%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
