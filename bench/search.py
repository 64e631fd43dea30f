"""Search benchmark: the platform's search against FLAML and AutoGluon, side by side.

    make bench-env                   # .venv-bench: flaml[automl], autogluon.tabular
    .venv/bin/python -m bench.search [--budgets 10 60] [--tables NAME ...] [--skip-rivals]

On scikit-learn's bundled tables and generated ones (a count target, a skewed
positive target, an imbalanced binary target, high-cardinality categoricals,
missing values), each written to CSV and read back, split once into training
rows (75 %) and test rows (25 %, stratified for classification, seed 0), every
contender fits on the same training rows and is scored on the same test rows
with the platform's metric code:

- default: the default job (`fit.pipeline.train_model`, no search);
- platform Ns: `fit.search.search_model` with a budget of N seconds;
- FLAML Ns: `flaml.AutoML` with `time_budget` N, optimising the same metric;
- AutoGluon 60s: `TabularPredictor(presets="medium_quality", time_limit=60)`.

FLAML and AutoGluon run in `.venv-bench` (their own environment: AutoGluon
needs pandas < 2.4, the platform runs on pandas 3), through
`bench/search_rivals.py`, so no service ever imports them. AutoGluon runs
without its neural networks (NN_TORCH, FASTAI): they need PyTorch, which PyPI
serves only with several GB of CUDA libraries; its boosted trees (LightGBM,
CatBoost, XGBoost), random forests, extra trees and k-NN all run. Each table's row
shows the task's primary metric (ROC AUC, macro F1, RMSE) and wall time (fit
and predict; for the rivals without their interpreter's start-up). The
platform's quote (`fit.estimate`, from a cost book that learns from the
benchmark's own runs, as a Trainer's does) is printed against the measured
wall time and memory growth.

Targets: at each budget the platform at or above the best of FLAML and
AutoGluon at that budget on at least 80 % of the tables, never more than 1 %
behind on any, and within its budget plus 20 s. Exit status 1 when a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from sklearn.model_selection import train_test_split

from bench.quality import messy_binary, messy_regression, sklearn_frame
from services.training.fit.estimate import CostBook, TableShape, estimate
from services.training.fit.pipeline import PipelineConfig, TrainingResult, evaluate, train_model
from services.training.fit.search import SearchSpec, search_model
from services.training.model import pyfunc_model
from services.training.model.columns import columns_from_frame
from services.training.model.targets import PRIMARY_METRICS, Task, encode_target, target_present
from services.training.work.runner import measurement

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
RIVALS = Path(__file__).resolve().parent / "search_rivals.py"
CONFIG = PipelineConfig(num_threads=os.cpu_count() or 1)
MiB = 1024 * 1024
WITHIN_SECONDS = 20.0
SHARE_AT_OR_ABOVE = 0.8
MOST_BEHIND = 0.01


# -- the tables ----------------------------------------------------------------------------


def visits(rows: int = 6000, seed: int = 21) -> pd.DataFrame:
    """A count target: doctor visits per person in a year."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows).astype(float)
    chronic = rng.poisson(0.6, rows)
    insured = rng.choice(["public", "private", "none"], rows, p=[0.6, 0.3, 0.1])
    income = rng.lognormal(10, 0.6, rows)
    income[rng.random(rows) < 0.08] = np.nan
    rate = np.exp(
        -1.2 + age / 45 + 0.45 * chronic + (insured == "private") * 0.3 - (insured == "none") * 0.6
    )
    return pd.DataFrame(
        {
            "age": age,
            "chronic_conditions": chronic,
            "insurance": insured,
            "income": income.round(0),
            "visits": rng.poisson(rate * rng.gamma(2.0, 0.5, rows)),
        }
    )


def claims(rows: int = 5000, seed: int = 8) -> pd.DataFrame:
    """A skewed positive target: insurance claim amounts."""
    rng = np.random.default_rng(seed)
    vehicle_age = rng.integers(0, 20, rows).astype(float)
    power = rng.normal(100, 30, rows)
    region = rng.choice([f"r{i}" for i in range(12)], rows)
    effect = {r: rng.normal(0, 0.3) for r in np.unique(region)}
    mean = np.exp(7 + 0.02 * vehicle_age + power / 150 + np.vectorize(effect.get)(region))
    amount = rng.gamma(1.5, mean / 1.5)
    return pd.DataFrame(
        {"vehicle_age": vehicle_age, "power": power, "region": region, "amount": amount.round(2)}
    )


def fraud(rows: int = 8000, seed: int = 4) -> pd.DataFrame:
    """An imbalanced binary target (about 3 % positive)."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4, 1.2, rows)
    hour = rng.integers(0, 24, rows).astype(float)
    merchant = rng.choice(["grocery", "travel", "online", "fuel", "luxury"], rows)
    foreign = rng.random(rows) < 0.15
    score = (
        0.8 * np.log(amount)
        + (merchant == "luxury") * 1.5
        + (merchant == "online") * 0.8
        + foreign * 1.2
        + ((hour < 5) | (hour > 22)) * 1.0
        + rng.normal(0, 1.2, rows)
    )
    label = np.where(score > np.quantile(score, 0.97), "fraud", "ok")
    return pd.DataFrame(
        {
            "amount": amount.round(2),
            "hour": hour,
            "merchant": merchant,
            "foreign": foreign,
            "label": label,
        }
    )


def zip_prices(rows: int = 6000, seed: int = 13) -> pd.DataFrame:
    """High-cardinality categoricals: 400 zip codes and 150 streets drive a price."""
    rng = np.random.default_rng(seed)
    zips = [f"Z{i:04d}" for i in range(400)]
    zip_effect = dict(zip(zips, rng.normal(0, 60, len(zips)), strict=True))
    code = rng.choice(zips, rows)
    street = rng.choice([f"street-{i}" for i in range(150)], rows)
    area = rng.normal(90, 25, rows).clip(20)
    price = 200 + np.vectorize(zip_effect.get)(code) + 2.2 * area + rng.normal(0, 25, rows)
    return pd.DataFrame({"zip": code, "street": street, "area": area.round(1), "price": price})


def with_missing(
    frame: pd.DataFrame, target: str, share: float = 0.25, seed: int = 2
) -> pd.DataFrame:
    """A quarter of every feature's values missing."""
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    for column in frame.columns:
        if column != target:
            frame.loc[rng.random(len(frame)) < share, column] = None
    return frame


@dataclass(frozen=True)
class Table:
    name: str
    frame: Callable[[], pd.DataFrame]
    target: str


TABLES = [
    Table("breast_cancer", lambda: sklearn_frame("breast_cancer"), "target"),
    Table("wine", lambda: sklearn_frame("wine"), "target"),
    Table("digits", lambda: sklearn_frame("digits"), "target"),
    Table("diabetes", lambda: sklearn_frame("diabetes"), "target"),
    Table("visits (count)", visits, "visits"),
    Table("claims (skewed positive)", claims, "amount"),
    Table("fraud (imbalanced binary)", fraud, "label"),
    Table("zip prices (high-cardinality)", zip_prices, "price"),
    Table("churn (missing values)", lambda: with_missing(messy_binary(), "churn"), "churn"),
    Table("prices (cat/missing/id)", messy_regression, "price"),
]


# -- one contender's score -----------------------------------------------------------------


@dataclass
class Score:
    value: float | None
    seconds: float
    note: str = ""
    estimate_seconds: float | None = None
    memory_mib: float | None = None
    estimate_memory_mib: float | None = None


@dataclass
class Prepared:
    name: str
    target: str
    task: Task
    class_names: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    test_labels: np.ndarray[Any, Any]
    directory: Path
    scores: dict[str, Score] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return PRIMARY_METRICS[self.task].name


def prepare_table(table: Table, directory: Path) -> Prepared:
    path = directory / "full.csv"
    table.frame().to_csv(path, index=False)
    frame = pd.read_csv(path)
    frame = frame.loc[target_present(frame[table.target]).to_numpy()].reset_index(drop=True)
    probe = train_model(
        frame.copy(),
        columns_from_frame(frame),
        table.target,
        Task.AUTO,
        {"num_iterations": 1},
        CONFIG,
    )
    task = probe.decision.task
    stratify = frame[table.target].astype(str) if task != Task.REGRESSION else None
    train, test = train_test_split(frame, test_size=0.25, random_state=0, stratify=stratify)
    train, test = train.reset_index(drop=True), test.reset_index(drop=True)
    train.to_csv(directory / "train.csv", index=False)
    test.to_csv(directory / "test.csv", index=False)
    labels = encode_target(test[table.target], probe.decision)
    return Prepared(
        table.name, table.target, task, probe.decision.class_names, train, test, labels, directory
    )


def platform_score(prepared: Prepared, result: TrainingResult) -> float:
    features = pyfunc_model.coerce_features(prepared.test, result.spec)
    raw = np.asarray(result.booster.predict(features, num_iteration=result.best_iteration))
    return evaluate(prepared.task, prepared.test_labels, raw)[prepared.metric]


@contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """The growth of this process's resident memory while the block runs, in MiB."""
    process = psutil.Process()
    start = process.memory_info().rss
    result = {"growth_mib": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            growth = (process.memory_info().rss - start) / MiB
            result["growth_mib"] = max(result["growth_mib"], growth)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()


def run_default(prepared: Prepared, costs: CostBook) -> Score:
    started = time.perf_counter()
    frame = prepared.train.copy()
    result = train_model(frame, columns_from_frame(frame), prepared.target, Task.AUTO, {}, CONFIG)
    seconds = time.perf_counter() - started
    costs.record(measurement(result, len(prepared.train.columns), seconds, 0.0))
    return Score(platform_score(prepared, result), seconds)


def run_platform(prepared: Prepared, budget: float, costs: CostBook) -> Score:
    frame = prepared.train.copy()
    columns = columns_from_frame(frame)
    classes = len(prepared.class_names)
    shape = TableShape(len(frame), max(1, len(frame.columns) - 1), classes if classes > 2 else 1)
    quote = estimate(costs.costs, shape, len(frame.columns), search=True, budget_seconds=budget)
    started = time.perf_counter()
    with peak_memory() as memory:
        result = search_model(
            frame, columns, prepared.target, Task.AUTO, {}, CONFIG, SearchSpec(budget, None)
        )
    seconds = time.perf_counter() - started
    costs.record(
        measurement(result, len(prepared.train.columns), seconds, memory["growth_mib"] * MiB)
    )
    assert result.search is not None
    note = f"{len(result.search.trials)} trials, {result.search.objective}"
    return Score(
        platform_score(prepared, result),
        seconds,
        note,
        estimate_seconds=quote.wall_seconds - costs.costs.overhead_seconds,
        memory_mib=memory["growth_mib"],
        estimate_memory_mib=(quote.peak_memory_bytes - costs.costs.base_memory_bytes) / MiB,
    )


def run_rival(prepared: Prepared, tool: str, budget: float) -> Score:
    if not BENCH_PYTHON.exists():
        return Score(None, 0.0, "no .venv-bench (make bench-env)")
    spec = {
        "target": prepared.target,
        "task": prepared.task.value,
        "metric": prepared.metric,
        "class_names": prepared.class_names,
    }
    spec_path = prepared.directory / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = prepared.directory / f"{tool}-{budget:g}.json"
    started = time.perf_counter()
    completed = subprocess.run(
        [
            str(BENCH_PYTHON),
            str(RIVALS),
            tool,
            str(budget),
            str(prepared.directory / "train.csv"),
            str(prepared.directory / "test.csv"),
            str(spec_path),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=budget * 4 + 300,
        check=False,
    )
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["?"])[-1][:80]
        return Score(None, time.perf_counter() - started, f"failed: {tail}")
    answer = json.loads(out.read_text())
    raw = np.asarray(answer["predictions"], dtype="float64")
    if prepared.task == Task.BINARY:
        raw = raw[:, 1]
    value = evaluate(prepared.task, prepared.test_labels, raw)[prepared.metric]
    return Score(value, float(answer["seconds"]))


# -- the verdict ---------------------------------------------------------------------------


def behind(prepared: Prepared, ours: float, best: float) -> float:
    """How far the platform is behind `best`, relative (0 when at or above it)."""
    if PRIMARY_METRICS[prepared.task].higher_is_better:
        return max(0.0, (best - ours) / max(abs(best), 1e-12))
    return max(0.0, (ours - best) / max(abs(best), 1e-12))


@dataclass
class Verdict:
    budget: float
    at_or_above: int = 0
    compared: int = 0
    worst_behind: float = 0.0
    slowest_over: float = -math.inf
    misses: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        share = self.at_or_above / self.compared if self.compared else 0.0
        return (
            self.compared > 0
            and share >= SHARE_AT_OR_ABOVE
            and self.worst_behind <= MOST_BEHIND
            and self.slowest_over <= WITHIN_SECONDS
        )


def judge(tables: list[Prepared], budget: float) -> Verdict:
    verdict = Verdict(budget)
    rivals = [f"FLAML {budget:g}s"] + ([f"AutoGluon {budget:g}s"] if budget >= 60 else [])
    for prepared in tables:
        ours = prepared.scores.get(f"platform {budget:g}s")
        if ours is None or ours.value is None:
            continue
        verdict.slowest_over = max(verdict.slowest_over, ours.seconds - budget)
        theirs = [
            s.value for name in rivals if (s := prepared.scores.get(name)) and s.value is not None
        ]
        if not theirs:
            continue
        pick = max if PRIMARY_METRICS[prepared.task].higher_is_better else min
        gap = behind(prepared, ours.value, pick(theirs))
        verdict.compared += 1
        verdict.at_or_above += gap == 0.0
        verdict.worst_behind = max(verdict.worst_behind, gap)
        if gap > 0:
            verdict.misses.append(f"{prepared.name} ({gap:.2%} behind)")
    return verdict


def cell(score: Score | None) -> str:
    if score is None:
        return f"{'-':>16}"
    if score.value is None:
        return f"{'fails':>16}"
    return f"{score.value:>8.4f} {score.seconds:>6.1f}s"


def print_report(tables: list[Prepared], budgets: list[float]) -> bool:
    contenders = ["default"] + [
        name
        for budget in budgets
        for name in (f"platform {budget:g}s", f"FLAML {budget:g}s")
        + ((f"AutoGluon {budget:g}s",) if budget >= 60 else ())
    ]
    header = f"{'table':31} {'task':10} {'metric':8} " + " ".join(f"{c:>16}" for c in contenders)
    print(header)
    print("-" * len(header))
    for prepared in tables:
        cells = " ".join(cell(prepared.scores.get(c)) for c in contenders)
        print(f"{prepared.name:31} {prepared.task.value:10} {prepared.metric:8} {cells}")
    print()
    print("estimate vs actual (platform searches: seconds of search + refit; memory growth MiB)")
    for prepared in tables:
        for budget in budgets:
            score = prepared.scores.get(f"platform {budget:g}s")
            if score is None or score.estimate_seconds is None:
                continue
            seconds = f"estimated {score.estimate_seconds:6.1f}s, actual {score.seconds:6.1f}s"
            memory = (
                f"memory estimated {score.estimate_memory_mib or 0:7.1f} MiB, "
                f"actual {score.memory_mib or 0:7.1f} MiB"
            )
            print(f"  {prepared.name:31} {budget:>4g}s budget: {seconds}; {memory}  [{score.note}]")
    print()
    all_ok = True
    for budget in budgets:
        verdict = judge(tables, budget)
        all_ok = all_ok and verdict.ok()
        share = verdict.at_or_above / verdict.compared if verdict.compared else 0.0
        print(
            f"{budget:g}s budget: at or above the best rival on {verdict.at_or_above}/"
            f"{verdict.compared} tables ({share:.0%}; target >= {SHARE_AT_OR_ABOVE:.0%}), "
            f"worst {verdict.worst_behind:.2%} behind (target <= {MOST_BEHIND:.0%}), "
            f"slowest {verdict.slowest_over:+.1f}s over budget (target <= +{WITHIN_SECONDS:g}s): "
            + ("PASS" if verdict.ok() else "MISS")
        )
        for miss in verdict.misses:
            print(f"    behind: {miss}")
    print()
    print("verdict:", "PASS" if all_ok else "FAIL")
    return all_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--tables", nargs="*", help="only tables whose name starts so")
    parser.add_argument("--skip-rivals", action="store_true", help="the platform only")
    args = parser.parse_args()
    tables = [t for t in TABLES if not args.tables or t.name.startswith(tuple(args.tables))]
    prepared_tables: list[Prepared] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        costs = CostBook(Path(scratch) / "costs")
        for index, table in enumerate(tables):
            directory = Path(scratch) / f"t{index}"
            directory.mkdir()
            prepared = prepare_table(table, directory)
            prepared.scores["default"] = run_default(prepared, costs)
            for budget in args.budgets:
                prepared.scores[f"platform {budget:g}s"] = run_platform(prepared, budget, costs)
                if args.skip_rivals:
                    continue
                prepared.scores[f"FLAML {budget:g}s"] = run_rival(prepared, "flaml", budget)
                if budget >= 60:
                    prepared.scores[f"AutoGluon {budget:g}s"] = run_rival(
                        prepared, "autogluon", budget
                    )
            print(f"done: {table.name}", file=sys.stderr, flush=True)
            prepared_tables.append(prepared)
    return 0 if print_report(prepared_tables, args.budgets) else 1


if __name__ == "__main__":
    sys.exit(main())
