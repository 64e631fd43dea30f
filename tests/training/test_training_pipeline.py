"""The training pipeline on real tables: scikit-learn's bundled datasets written to CSV
and read back, and generated data with categorical, missing and ID-like columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.training.fit.binning import FeatureRows
from services.training.fit.dataset_reader import decode_stream, to_pandas
from services.training.fit.frame_builder import FrameBuilder
from services.training.fit.pipeline import (
    PipelineConfig,
    PreparedData,
    TrainingResult,
    TrainingStopped,
    default_learning_rate,
    default_rounds,
    evaluate,
    lightgbm_feature_names,
    lightgbm_params,
    prepare,
    subset,
    train_model,
)
from services.training.model import pyfunc_model
from services.training.model.columns import ColumnInfo, ColumnType, columns_from_frame
from services.training.model.pyfunc_model import coerce_features, feature_names
from services.training.model.targets import PRIMARY_METRICS, Task, TrainingFailure
from services.training.tracking.champion import beats_champion
from services.training.tracking.run_content import curve_steps
from tests.training.training_support import messy_frame, sklearn_csv

CONFIG = PipelineConfig(num_threads=2)


def train_csv(path: Path, target: str, task: Task = Task.AUTO, **params: Any) -> TrainingResult:
    frame = pd.read_csv(path)
    return train_model(frame, columns_from_frame(frame), target, task, params, CONFIG)


def failure(frame: pd.DataFrame, target: str, task: Task = Task.AUTO) -> TrainingFailure:
    with pytest.raises(TrainingFailure) as error:
        train_model(frame, columns_from_frame(frame), target, task, {}, CONFIG)
    return error.value


def test_binary_numeric_labels(tmp_path: Path) -> None:
    result = train_csv(sklearn_csv(tmp_path, "breast_cancer"), "target")
    assert result.decision.task == Task.BINARY
    assert result.decision.class_names == ["0", "1"]
    assert set(result.metrics) == {"accuracy", "f1", "roc_auc", "log_loss", "precision", "recall"}
    assert result.metrics["roc_auc"] > 0.97
    assert result.validation_rows == 114
    assert 1 <= result.best_iteration < int(result.effective_params["num_iterations"])
    assert len(result.curve["auc"]) == result.best_iteration + 50
    assert result.effective_params["objective"] == "binary"


def test_string_labels_train_a_multiclass_model(tmp_path: Path) -> None:
    result = train_csv(sklearn_csv(tmp_path, "iris", string_labels=True), "target")
    assert result.decision.task == Task.MULTICLASS
    assert result.decision.class_names == ["setosa", "versicolor", "virginica"]
    assert "3 distinct string labels" in result.decision.reason
    assert set(result.metrics) == {"accuracy", "macro_f1", "log_loss"}
    assert result.metrics["macro_f1"] > 0.85
    assert result.effective_params["num_class"] == 3


def test_few_whole_numbers_are_classes_and_many_are_a_regression(tmp_path: Path) -> None:
    wine = train_csv(sklearn_csv(tmp_path, "wine"), "target")
    assert wine.decision.task == Task.MULTICLASS
    assert wine.decision.class_labels == (0, 1, 2)
    diabetes = train_csv(sklearn_csv(tmp_path, "diabetes"), "target")
    assert diabetes.decision.task == Task.REGRESSION
    assert set(diabetes.metrics) == {"rmse", "mae", "r2", "mse"}
    assert diabetes.metrics["r2"] > 0.2
    forced = train_csv(sklearn_csv(tmp_path, "wine"), "target", Task.REGRESSION)
    assert forced.decision.task == Task.REGRESSION


def test_classification_is_binary_or_multiclass_never_regression() -> None:
    rows = 240
    frame = pd.DataFrame(
        {
            "x": np.arange(rows) % 12,
            "grade": np.arange(rows) % 12,  # 12 whole numbers: AUTO would say REGRESSION
            "flag": np.arange(rows) % 2,
        }
    )
    columns = columns_from_frame(frame)
    many = train_model(frame, columns, "grade", Task.CLASSIFICATION, {}, CONFIG)
    assert many.decision.task == Task.MULTICLASS
    assert many.decision.reason.startswith("CLASSIFICATION: 12 ")
    assert "accuracy" in many.metrics
    flags = frame.drop(columns="grade")
    two = train_model(flags, columns_from_frame(flags), "flag", Task.CLASSIFICATION, {}, CONFIG)
    assert two.decision.task == Task.BINARY
    auto = train_model(frame, columns, "grade", Task.AUTO, {}, CONFIG)
    assert auto.decision.task == Task.REGRESSION


def test_messy_columns_are_dropped_with_reasons_and_categories_are_native(tmp_path: Path) -> None:
    frame = messy_frame()
    columns = columns_from_frame(frame)
    columns = [ColumnInfo(c.name, ColumnType.DATE) if c.name == "signup" else c for c in columns]
    result = train_model(frame, columns, "label", Task.AUTO, {}, CONFIG)
    assert dict(result.dropped_columns) == {
        "customer_id": "id_like",
        "row_number": "id_like",
        "constant": "constant",
    }
    kinds = {feature["name"]: feature["kind"] for feature in result.spec["features"]}
    assert kinds == {
        "color": "categorical",
        "size": "numeric",
        "count": "numeric",
        "signup": "datetime",
        "flag": "boolean",
    }
    assert [name for name in feature_names(result.spec) if name.startswith("signup")] == [
        "signup__year",
        "signup__month",
        "signup__day",
        "signup__dayofweek",
        "signup__elapsed_days",
    ]
    assert result.rows_dropped_missing_target == int(frame["label"].isna().sum()) > 0
    assert result.rows_used + result.rows_dropped_missing_target == len(frame)
    assert result.booster.pandas_categorical == [["blue", "green", "red", "violet"]]
    assert result.metrics["roc_auc"] > 0.8
    # Raw rows as pandas reads them from the CSV, with a category never seen in training.
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    raw = pd.read_csv(path).drop(columns=["label"]).head(10)
    raw.loc[0, "color"] = "orange"
    features = pyfunc_model.coerce_features(raw, result.spec)
    assert features["color"].isna().tolist()[0]
    predicted = pyfunc_model.predict_frame(result.booster, result.spec, features)
    assert set(predicted["prediction"]) <= {"no", "yes"}
    assert np.allclose(predicted[["probability_no", "probability_yes"]].sum(axis=1), 1.0)


def test_a_boolean_target_is_binary() -> None:
    frame = messy_frame().drop(columns=["label"])
    result = train_model(frame, columns_from_frame(frame), "flag", Task.AUTO, {}, CONFIG)
    assert result.decision.task == Task.BINARY
    assert result.decision.class_labels == (False, True)
    assert result.decision.class_names == ["false", "true"]


@pytest.mark.parametrize(
    ("target", "task", "reason", "code"),
    [
        ("constant", Task.AUTO, "TARGET_CONSTANT", "FAILED_PRECONDITION"),
        ("rare", Task.AUTO, "TARGET_CLASS_TOO_SMALL", "FAILED_PRECONDITION"),
        ("color", Task.REGRESSION, "TARGET_NOT_NUMERIC", "INVALID_ARGUMENT"),
        ("absent", Task.AUTO, "TARGET_COLUMN_NOT_FOUND", "INVALID_ARGUMENT"),
        ("color", Task.BINARY, "TASK_TARGET_MISMATCH", "INVALID_ARGUMENT"),
        ("flag", Task.MULTICLASS, "TASK_TARGET_MISMATCH", "INVALID_ARGUMENT"),
        ("empty", Task.AUTO, "TARGET_ALL_MISSING", "FAILED_PRECONDITION"),
        ("customer_id", Task.AUTO, "TARGET_TOO_MANY_CLASSES", "FAILED_PRECONDITION"),
    ],
)
def test_untrainable_targets_fail_with_stable_reasons(
    target: str, task: Task, reason: str, code: str
) -> None:
    frame = messy_frame()
    frame["rare"] = ["common"] * (len(frame) - 3) + ["rare"] * 3
    frame["empty"] = np.nan
    error = failure(frame, target, task)
    assert error.reason == reason
    assert error.code == code
    assert error.message


def test_no_usable_feature_and_too_few_rows() -> None:
    frame = messy_frame()[["customer_id", "constant", "label"]]
    assert failure(frame, "label").reason == "NO_USABLE_FEATURES"
    assert "customer_id (id_like)" in failure(frame, "label").message
    tiny = messy_frame(rows=8)
    assert failure(tiny, "size").reason == "DATASET_TOO_SMALL"


def test_balanced_class_weights_raise_minority_recall() -> None:
    rng = np.random.default_rng(0)
    rows = 3000
    x = rng.normal(size=(rows, 3))
    y = np.where(x[:, 0] + rng.normal(scale=1.5, size=rows) > 2.2, "fraud", "ok")
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=y)
    columns = columns_from_frame(frame)
    plain = train_model(frame, columns, "y", Task.AUTO, {}, CONFIG)
    balanced = train_model(frame, columns, "y", Task.AUTO, {"class_weight": "balanced"}, CONFIG)
    assert plain.decision.class_names == ["fraud", "ok"]
    # The first class ("fraud") is the minority; balanced weights find more of it.
    prepared = prepare(frame, columns, "y", Task.AUTO, CONFIG)
    labels = prepared.valid_labels
    recalls = []
    for result in (plain, balanced):
        probabilities = pyfunc_model.class_probabilities(
            np.asarray(result.booster.predict(prepared.valid_features)), "binary"
        )
        chosen = probabilities.argmax(axis=1)
        recalls.append(((chosen == 0) & (labels == 0)).sum() / (labels == 0).sum())
    assert recalls[1] > recalls[0]
    assert balanced.effective_params["class_weight"] == "balanced"


def test_default_rounds_shrink_with_the_table() -> None:
    frame = messy_frame()
    prepared = prepare(frame, columns_from_frame(frame), "label", Task.AUTO, CONFIG)
    assert default_rounds(prepared, CONFIG) == 1000
    small_budget = PipelineConfig(boosting_work_budget=1e4)
    assert default_rounds(prepared, small_budget) == 50
    # Fewer rounds, bigger steps: 0.1 at 1000 rounds, 0.2 at 250, at most 0.3.
    assert [default_learning_rate(r) for r in (1000, 250, 70)] == [0.1, 0.2, 0.3]
    capped = train_model(
        prepared_frame := messy_frame(),
        columns_from_frame(prepared_frame),
        "label",
        Task.AUTO,
        {},
        PipelineConfig(boosting_work_budget=1e4, num_threads=2),
    )
    assert capped.effective_params["num_iterations"] == 50
    assert capped.effective_params["learning_rate"] == 0.3


def test_a_stop_request_interrupts_training() -> None:
    class StopAfter:
        def __init__(self) -> None:
            self.iterations = 0

        def check(self) -> None:
            if self.iterations >= 5:
                raise TrainingStopped("cancelled")

        def decided(self, decision: Any) -> None:
            return None

        def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
            self.iterations = iteration

    frame = messy_frame()
    hooks = StopAfter()
    with pytest.raises(TrainingStopped):
        train_model(
            frame,
            columns_from_frame(frame),
            "size",
            Task.AUTO,
            {"num_iterations": 500, "early_stopping_round": 0},
            CONFIG,
            hooks,
        )
    assert hooks.iterations == 5


def test_raw_rows_are_coerced_or_refused_naming_column_and_row() -> None:
    spec = {
        "features": [
            {"name": "n", "kind": "numeric"},
            {"name": "b", "kind": "boolean"},
            {"name": "c", "kind": "categorical", "categories": ["1", "x", "true"]},
        ]
    }
    raw = pd.DataFrame({"n": ["1.5", "", None], "b": ["yes", "False", None], "c": [1.0, True, "x"]})
    features = pyfunc_model.coerce_features(raw, spec)
    assert features["n"].tolist()[0] == 1.5
    assert features["n"].isna().tolist() == [False, True, True]
    assert features["b"].tolist()[:2] == [1.0, 0.0]
    assert features["c"].tolist() == ["1", "true", "x"]
    with pytest.raises(pyfunc_model.InvalidModelInput) as missing:
        pyfunc_model.coerce_features(raw.drop(columns=["b", "c"]), spec)
    assert missing.value.reason == "PREDICT_COLUMNS_MISSING"
    assert missing.value.column == "b,c"
    bad = raw.assign(n=["1", "2", "three"])
    with pytest.raises(pyfunc_model.InvalidModelInput) as invalid:
        pyfunc_model.coerce_features(bad, spec)
    assert invalid.value.reason == "PREDICT_VALUE_INVALID"
    assert invalid.value.column == "n"
    assert invalid.value.rows == (2,)
    assert "'three'" in str(invalid.value)


def test_champion_moves_only_when_strictly_better() -> None:
    binary = PRIMARY_METRICS[Task.BINARY]
    assert beats_champion({"roc_auc": 0.9, "log_loss": 0.3}, None, binary)[0]
    assert beats_champion({"roc_auc": 0.91}, {"roc_auc": 0.9}, binary)[0]
    assert not beats_champion(
        {"roc_auc": 0.9, "log_loss": 0.3}, {"roc_auc": 0.9, "log_loss": 0.3}, binary
    )[0]
    assert beats_champion(
        {"roc_auc": 0.9, "log_loss": 0.2}, {"roc_auc": 0.9, "log_loss": 0.3}, binary
    )[0]
    assert not beats_champion({"roc_auc": 0.89}, {"roc_auc": 0.9}, binary)[0]
    regression = PRIMARY_METRICS[Task.REGRESSION]
    assert beats_champion({"rmse": 1.0}, {"rmse": 2.0}, regression)[0]
    assert not beats_champion({"rmse": 2.0}, {"rmse": 1.0}, regression)[0]
    assert beats_champion({"rmse": 2.0}, {"roc_auc": 0.9}, regression)[0]  # not comparable


def test_validation_curves_are_thinned_beyond_a_thousand_points() -> None:
    assert curve_steps(300, 120) == list(range(1, 301))
    steps = curve_steps(10_000, 4321)
    assert len(steps) <= 1002
    assert {1, 4321, 10_000} <= set(steps)


async def test_arrow_stream_is_decoded_whatever_the_chunking() -> None:
    frame = messy_frame(rows=300)
    table = pa.Table.from_pandas(frame[["color", "size", "flag"]], preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=64):
            writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()

    async def chunks(size: int) -> Any:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    for size in (7, 1000, len(data)):
        decoded = await decode_stream(chunks(size))
        assert decoded.num_rows == 300
    loaded = to_pandas(decoded)
    assert isinstance(loaded["color"].dtype, pd.CategoricalDtype)
    assert loaded["color"].astype(str).tolist() == frame["color"].astype(str).tolist()
    assert loaded["size"].equals(frame["size"])


def test_dates_become_features_and_flagged_row_numbers_are_left_out() -> None:
    """A date written day-first and a timestamp carry the signal; row numbers do not count."""
    rng = np.random.default_rng(5)
    rows = 800
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 730, rows), unit="D")
    hours = rng.integers(0, 24, rows)
    moments = days + pd.to_timedelta(hours, unit="h")
    # Weekends and evenings are busy: only the date and time parts can tell.
    busy = (days.day_of_week >= 5) | (hours >= 18)
    frame = pd.DataFrame(
        {
            "unnamed_0": np.arange(rows),
            "day": days.strftime("%d/%m/%Y"),
            "at": moments,
            "noise": rng.normal(0, 1, rows),
            "busy": np.where(busy, "yes", "no"),
        }
    )
    columns = [
        ColumnInfo("unnamed_0", ColumnType.INTEGER, row_number=True),
        ColumnInfo("day", ColumnType.DATE, date_format="%d/%m/%Y"),
        ColumnInfo("at", ColumnType.TIMESTAMP),
        ColumnInfo("noise", ColumnType.FLOAT),
        ColumnInfo("busy", ColumnType.STRING),
    ]
    result = train_model(frame, columns, "busy", Task.AUTO, {}, CONFIG)

    assert dict(result.dropped_columns) == {"unnamed_0": "row_number"}
    assert "at__hour" in feature_names(result.spec)
    assert "day__hour" not in feature_names(result.spec)
    assert result.metrics["accuracy"] > 0.9
    scored = coerce_features(
        pd.DataFrame(
            {
                "day": ["25/03/2024", "2024-03-26"],
                "at": ["2024-03-25 20:00:00", None],
                "noise": [0.0, 0.0],
            }
        ),
        result.spec,
    )
    assert scored["day__dayofweek"].tolist() == [0.0, 1.0]  # Monday, then Tuesday (ISO)
    assert scored["at__hour"].tolist()[0] == 20.0
    assert np.isnan(scored["at__hour"].tolist()[1])


def _record_batches(frame: pd.DataFrame, rows: int) -> list[pa.RecordBatch]:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    batches: list[pa.RecordBatch] = table.to_batches(max_chunksize=rows)
    return batches


# The dataset's row count (rows without a target included), none, or too few: the
# number columns are sized by it and grown or trimmed to the rows kept.
@pytest.mark.parametrize("expected_rows", [600, 0, 100])
def test_batches_become_one_compact_frame_as_they_arrive(expected_rows: int) -> None:
    frame = messy_frame(rows=600)[["color", "size", "count", "flag", "label"]]
    batches = _record_batches(frame, 64)
    builder = FrameBuilder(batches[0].schema, "label", expected_rows)
    for batch in batches:
        builder.add(batch)
    built = builder.finish()
    kept = frame.loc[frame["label"].notna()].reset_index(drop=True)
    # Rows without a target are left out while reading, and counted.
    assert builder.rows_dropped_missing_target == int(frame["label"].isna().sum()) > 0
    assert len(built) == len(kept) == builder.rows
    # Text: one `category` column whatever each batch's dictionary held.
    assert isinstance(built["color"].dtype, pd.CategoricalDtype)
    assert built["color"].astype(str).tolist() == kept["color"].tolist()
    # Numbers: float64, missing values as NaN, in place.
    assert built["count"].dtype == "float64"
    assert built["count"].isna().sum() == kept["count"].isna().sum() > 0
    np.testing.assert_array_equal(built["size"].to_numpy(), kept["size"].to_numpy())
    assert built["flag"].tolist() == kept["flag"].tolist()


def test_streamed_rows_train_the_model_the_frame_would() -> None:
    frame = messy_frame(rows=3000, seed=11)
    columns = columns_from_frame(frame)
    whole = train_model(frame, columns, "label", Task.AUTO, {}, CONFIG)
    builder = FrameBuilder(_record_batches(frame, 500)[0].schema, "label")
    for batch in _record_batches(frame, 500):
        builder.add(batch)
    streamed = train_model(
        builder.finish(),
        columns,
        "label",
        Task.AUTO,
        {},
        CONFIG,
        rows_dropped_missing_target=builder.rows_dropped_missing_target,
    )
    assert streamed.rows_dropped_missing_target == whole.rows_dropped_missing_target > 0
    assert streamed.rows_used == whole.rows_used
    assert streamed.spec == whole.spec
    assert streamed.metrics == pytest.approx(whole.metrics, abs=1e-9)
    # The booster reads `category` columns by the model's own levels, as Predict gives them.
    raw = frame.loc[frame["label"].notna()].head(200)
    features = pyfunc_model.coerce_features(raw, streamed.spec)
    by_pyfunc = pyfunc_model.predict_frame(streamed.booster, streamed.spec, features)
    codes = np.column_stack(
        [
            features[name].cat.codes.astype("float64").replace(-1.0, np.nan)
            if isinstance(features[name].dtype, pd.CategoricalDtype)
            else features[name].astype("float64")
            for name in features.columns
        ]
    )
    by_codes = np.asarray(streamed.booster.predict(codes))
    np.testing.assert_allclose(by_pyfunc["probability_yes"].to_numpy(), by_codes)
    assert streamed.booster.pandas_categorical == [
        feature["categories"]
        for feature in streamed.spec["features"]
        if feature["kind"] == pyfunc_model.CATEGORICAL
    ]


@pytest.mark.parametrize(
    ("counts", "seed"),
    [([500, 500], 42), ([990, 10], 42), ([7, 3, 300, 45], 42), ([333, 333, 334], 7), ([5, 5], 42)],
)
def test_the_lean_stratified_split_draws_scikit_learns_rows(counts: list[int], seed: int) -> None:
    from sklearn.model_selection import train_test_split

    from services.training.fit.pipeline import stratified_split

    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    theirs = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=seed, shuffle=True, stratify=labels
    )
    ours = stratified_split(labels, 0.2, seed)
    assert ours is not None
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    # A class of one row: scikit-learn's refusal (and its reason) is kept.
    assert stratified_split(np.array([0, 0, 0, 1]), 0.2, seed) is None


def _arrow_built_dataset(prepared: PreparedData, params: dict[str, Any]) -> lgb.Dataset:
    """LightGBM building its Dataset from an Arrow table of the same features (its own
    sampling and binning), as the Trainer did before `fit/binning.py`."""
    names = feature_names(prepared.spec)
    arrays: list[pa.Array] = []
    categorical: list[int] = []
    for index, name in enumerate(names):
        values = prepared.features[name]
        if isinstance(values.dtype, pd.CategoricalDtype):
            categorical.append(index)
            codes = values.cat.codes.to_numpy()
            arrays.append(pa.array(codes, mask=codes < 0))
        else:
            arrays.append(pa.array(values.to_numpy(dtype="float64")))
    table = pa.Table.from_arrays(arrays, names=lightgbm_feature_names(names))
    return lgb.Dataset(
        table, label=prepared.labels, categorical_feature=categorical, params=params
    ).construct()


def test_binning_from_columns_builds_the_model_lightgbm_builds_from_arrow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rows pushed into the bins in several batches, as on a large table.
    monkeypatch.setattr(FeatureRows, "batch_size", 512)
    frame = messy_frame(rows=3000, seed=5)
    prepared = prepare(frame, columns_from_frame(frame), "label", Task.AUTO, CONFIG)
    params, _, _ = lightgbm_params({}, prepared, CONFIG)
    # A sample smaller than the table: which rows are sampled decides the bins.
    params["bin_construct_sample_cnt"] = 700
    valid_rows = np.column_stack(
        [
            values.cat.codes.astype("float64").replace(-1.0, np.nan)
            if isinstance(values.dtype, pd.CategoricalDtype)
            else values.astype("float64")
            for _, values in prepared.valid_features.items()
        ]
    )
    models: list[str] = []
    aucs: list[float] = []
    for every_row in (prepared.lightgbm_dataset(params), _arrow_built_dataset(prepared, params)):
        train_set = subset(every_row, prepared.train_index)
        booster = lgb.train(params, train_set, num_boost_round=30)
        models.append(booster.model_to_string())
        raw = np.asarray(booster.predict(valid_rows))
        aucs.append(evaluate(Task.BINARY, prepared.valid_labels, raw)["roc_auc"])
    assert models[0] == models[1]
    assert aucs[0] == aucs[1] > 0.8


def test_released_rows_keep_the_validation_rows_as_read_and_as_features() -> None:
    frame = messy_frame(rows=800, seed=3)
    prepared = prepare(frame, columns_from_frame(frame), "label", Task.AUTO, CONFIG)
    rows = prepared.rows
    assert rows is not None
    expected_features = prepared.features.iloc[prepared.valid_index].copy()
    expected_inputs = rows.drop(columns=["label"]).iloc[prepared.valid_index].copy()
    del rows
    prepared.release_rows()
    assert prepared.rows is None
    assert len(prepared.features) == 0
    pd.testing.assert_frame_equal(prepared.valid_features, expected_features)
    assert prepared.valid_inputs is not None
    pd.testing.assert_frame_equal(prepared.valid_inputs, expected_inputs)
    # The numbers read are the features' own validation arrays, held once.
    assert np.shares_memory(
        prepared.valid_inputs["size"].to_numpy(), prepared.valid_features["size"].to_numpy()
    )
