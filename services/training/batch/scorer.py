"""Scoring record batches into a Parquet file, one batch at a time.

The rows arrive as Arrow record batches (DatasetService.ReadDataset, decoded while
the stream arrives); each batch is scored by the function Predict uses
(`model.scoring.score_frame`: the same features, trust flags and, with `explain`,
TreeSHAP contributions), and written to the output file as one row group, then
let go. Memory holds one input batch and
its output whatever the row count. Pass-through columns are copied from the Arrow
batch as they are (types kept), never through pandas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.limits import echo
from services.training import reasons
from services.training.fit.dataset_reader import to_pandas
from services.training.model import pyfunc_model, scoring
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.targets import TrainingFailure

PREDICTION_COLUMN = pyfunc_model.PREDICTION_COLUMN
PROBABILITY_PREFIX = pyfunc_model.PROBABILITY_PREFIX
# Each row's trust flags, `kind:column` joined by `;` (`all_missing` alone); empty
# when the row is like the training data.
FLAGS_COLUMN = "flags"
CONTRIBUTION_PREFIX = "contribution_"
BASE_VALUE_COLUMN = "base_value"


@dataclass(frozen=True)
class ScoringOptions:
    """What the output holds besides the prediction and the flags."""

    pass_through_columns: tuple[str, ...] = ()
    class_probabilities: bool = False
    explain: bool = False


def output_names(spec: FeatureSpec, options: ScoringOptions) -> list[str]:
    """The output's columns, in order: pass-through, prediction, probabilities, flags,
    then with `explain` each feature's contribution and the base value (per explained
    class for a multiclass model: `contribution_<class>_<feature>`, `base_value_<class>`)."""
    names = [*options.pass_through_columns, PREDICTION_COLUMN]
    if options.class_probabilities and spec["task"] != pyfunc_model.REGRESSION:
        names.extend(probability_column(label) for label in spec["class_labels"])
    names.append(FLAGS_COLUMN)
    if options.explain:
        for prefix in _explained_prefixes(spec):
            names.extend(
                f"{CONTRIBUTION_PREFIX}{prefix}{feature}"
                for feature in pyfunc_model.feature_names(spec)
            )
            names.append(f"{BASE_VALUE_COLUMN}{'_' + prefix[:-1] if prefix else ''}")
    return names


def _explained_prefixes(spec: FeatureSpec) -> list[str]:
    """'' for a model explained by one score (regression, binary), '<class>_' each else."""
    if spec["task"] != pyfunc_model.MULTICLASS:
        return [""]
    return [f"{pyfunc_model.label_text(label)}_" for label in spec["class_labels"]]


def probability_column(label: Any) -> str:
    return f"{PROBABILITY_PREFIX}{pyfunc_model.label_text(label)}"


def columns_to_read(spec: FeatureSpec, options: ScoringOptions) -> list[str]:
    """The model's input columns, then pass-through columns it does not already read."""
    inputs = pyfunc_model.input_names(spec)
    return inputs + [name for name in options.pass_through_columns if name not in inputs]


def check_columns(
    spec: FeatureSpec, options: ScoringOptions, dataset_id: str, available: list[str]
) -> None:
    """Refuse, before reading a row, a dataset that lacks the model's columns or the
    pass-through ones, and pass-through names the output uses itself."""
    present = set(available)
    missing = [name for name in pyfunc_model.input_names(spec) if name not in present]
    if missing:
        raise TrainingFailure(
            reasons.PREDICT_COLUMNS_MISSING,
            f"dataset {dataset_id} lacks the model's column(s): {echo(', '.join(missing))}",
            invalid_argument=True,
            metadata={"dataset_id": dataset_id, "column": echo(",".join(missing))},
        )
    produced = set(output_names(spec, ScoringOptions(class_probabilities=True, explain=True)))
    clashing = [name for name in options.pass_through_columns if name in produced]
    if clashing:
        raise TrainingFailure(
            reasons.SCORING_COLUMN_CONFLICT,
            f"pass-through column(s) {echo(', '.join(clashing))} would repeat an output column",
            invalid_argument=True,
            metadata={"column": echo(",".join(clashing))},
        )
    unknown = [name for name in options.pass_through_columns if name not in present]
    if unknown:
        raise TrainingFailure(
            reasons.SCORING_COLUMN_NOT_FOUND,
            f"dataset {dataset_id} has no column(s) {echo(', '.join(unknown))} to pass through",
            invalid_argument=True,
            metadata={"dataset_id": dataset_id, "column": echo(",".join(unknown))},
        )


def _prediction_type(spec: FeatureSpec) -> pa.DataType:
    if spec["task"] == pyfunc_model.REGRESSION:
        return pa.float64()
    return pa.array(spec["class_labels"]).type


class BatchScorer:
    """Scores the record batches handed to `add` into a Parquet file at `path`.

    Runs in one thread (the one decoding the stream). `check` is called before
    every batch (it raises to stop the job); `on_rows` gets the rows done so far.
    """

    def __init__(
        self,
        booster: lgb.Booster,
        spec: FeatureSpec,
        options: ScoringOptions,
        input_schema: pa.Schema,
        path: Path,
        check: Callable[[], None] = lambda: None,
        on_rows: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._booster = booster
        self._spec = spec
        self._options = options
        self._inputs = pyfunc_model.input_names(spec)
        self._check = check
        self._on_rows = on_rows
        fields = [input_schema.field(name) for name in options.pass_through_columns]
        fields.append(pa.field(PREDICTION_COLUMN, _prediction_type(spec)))
        names = output_names(spec, options)
        fields.extend(
            pa.field(name, pa.string() if name == FLAGS_COLUMN else pa.float64())
            for name in names[len(fields) :]
        )
        self.schema = pa.schema(fields)
        self.flag_counts = scoring.FlagCounts()
        self.path = path
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            path, self.schema, compression="zstd"
        )
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self._check()
        if batch.num_rows == 0:
            return
        frame = to_pandas(pa.Table.from_batches([batch.select(self._inputs)]))
        try:
            scored = scoring.score_frame(self._booster, self._spec, frame, self._options.explain)
        except pyfunc_model.InvalidModelInput as error:
            raise self._invalid(error) from error
        del frame
        self.flag_counts += scored.flags.counts()
        columns = _explained_columns(scored.explanations) if scored.explanations else {}
        columns[FLAGS_COLUMN] = pa.array(_flag_texts(scored.flags), type=pa.string())
        arrays = [batch.column(name) for name in self._options.pass_through_columns]
        for field in self.schema:
            if field.name in scored.output.columns:
                arrays.append(_arrow(scored.output[field.name], field.type))
            elif field.name in columns:
                arrays.append(columns[field.name])
        assert self._writer is not None, "scoring after close"
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.rows += batch.num_rows
        self._on_rows(self.rows)

    def _invalid(self, error: pyfunc_model.InvalidModelInput) -> TrainingFailure:
        """The value error with row numbers counted from the dataset's first row."""
        rows = ",".join(str(self.rows + row) for row in error.rows)
        message = str(error).split(" at row index ")[0]
        return TrainingFailure(
            error.reason,
            f"{message} at row {rows}" if rows else message,
            invalid_argument=True,
            metadata={"column": echo(error.column)} | ({"rows": rows} if rows else {}),
        )

    def close(self) -> None:
        """Finish the file (footer written); safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _flag_texts(flags: scoring.TrustFlags) -> np.ndarray[Any, Any]:
    """Each row's flags as text, built flag by flag (vectorised over the rows)."""
    texts = np.full(flags.rows, "", dtype=object)
    labelled = [
        *((f"{scoring.UNSEEN_CATEGORY}:{name}", m) for name, m in flags.unseen_category.items()),
        *((f"{scoring.OUT_OF_RANGE}:{name}", m) for name, m in flags.out_of_range.items()),
        (scoring.ALL_MISSING, flags.all_missing),
    ]
    for label, mask in labelled:
        rows = np.flatnonzero(mask)
        if rows.size:
            texts[rows] = [f"{text};{label}" if text else label for text in texts[rows]]
    return texts


def _explained_columns(explained: scoring.Explanations) -> dict[str, pa.Array]:
    """Contribution and base value columns, named as `output_names` names them."""
    columns: dict[str, pa.Array] = {}
    several = len(explained.class_names) > 1
    for k, class_name in enumerate(explained.class_names):
        prefix = f"{class_name}_" if several else ""
        for j, feature in enumerate(explained.feature_names):
            values = np.ascontiguousarray(explained.contributions[:, k, j])
            columns[f"{CONTRIBUTION_PREFIX}{prefix}{feature}"] = pa.array(values)
        base = np.ascontiguousarray(explained.base_values[:, k])
        columns[f"{BASE_VALUE_COLUMN}{'_' + class_name if several else ''}"] = pa.array(base)
    return columns


def _arrow(values: pd.Series[Any], data_type: pa.DataType) -> pa.Array:
    return pa.array(values.to_numpy(), type=data_type, from_pandas=True)
