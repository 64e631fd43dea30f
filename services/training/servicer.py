"""TrainerService: parameter checks, registered models, predictions.

Handlers raise ServiceError; the runtime's interceptor turns it into the gRPC
status with its ErrorInfo reason. MLflow calls run in threads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2

from modelyard.dataset.v1 import dataset_pb2
from modelyard.training.v1 import model_pb2, trainer_service_pb2, trainer_service_pb2_grpc
from runtime import access
from runtime.errors import ServiceError, failed_precondition, invalid_argument, unavailable
from services.training import reasons
from services.training.fit.dataset_reader import DatasetReader, DatasetUnavailable
from services.training.fit.estimate import CostBook, TableShape, estimate
from services.training.model import pyfunc_model, scoring
from services.training.model.params import as_strings, validate_params
from services.training.model.row_scoring import ColumnValues, FloatArray, RowScores
from services.training.model.targets import MAX_NUMERIC_CLASSES, TrainingFailure
from services.training.serving.cache import LoadedModel, ModelCache
from services.training.serving.catalog import ModelCatalog, validate_model_name
from services.training.serving.versions import VersionResolver
from services.training.settings import TrainerSettings
from services.training.tracking import projects
from services.training.tracking.champion import CHAMPION_ALIAS

Context = Any  # grpc.aio.ServicerContext (grpc ships no types)
PROFILE_CACHE_SECONDS = 60.0
# A Predict of this many rows or fewer is scored on the event
# loop: about a millisecond of work, where handing it to a thread and back costs more
# than that under load (each hop waits for the GIL, up to its 5 ms switch interval).
INLINE_PREDICT_ROWS = 16
_NOT_FEATURES = (
    dataset_pb2.Column.DATE,
    dataset_pb2.Column.TIMESTAMP,
    dataset_pb2.Column.ALL_NULL,
)


def table_shape(dataset: dataset_pb2.Dataset, target: str) -> tuple[TableShape, int]:
    """Rows, likely features and trees a round, from the dataset's profile; and the
    columns the Trainer reads (all but dates and empty ones)."""
    read = [c for c in dataset.columns if c.data_type not in _NOT_FEATURES or c.name == target]
    features = [c for c in read if c.name != target and not c.id_like and not c.row_number]
    classes = 1
    for column in dataset.columns:
        if column.name != target:
            continue
        distinct = column.profile.distinct_count
        numeric = column.data_type in (dataset_pb2.Column.INTEGER, dataset_pb2.Column.FLOAT)
        whole = column.data_type == dataset_pb2.Column.INTEGER
        if distinct > 2 and (not numeric or (whole and distinct <= MAX_NUMERIC_CLASSES)):
            classes = int(distinct)
    return TableShape(int(dataset.row_count), max(1, len(features)), classes), len(read)


class TrainerServicer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(
        self,
        settings: TrainerSettings,
        catalog: ModelCatalog,
        models: ModelCache,
        datasets: DatasetReader | None = None,
        costs: CostBook | None = None,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._models = models
        self._datasets = datasets
        self._costs = costs or CostBook(settings.resolved_work_dir())
        self._versions = VersionResolver(catalog, models, settings.alias_refresh_seconds)
        # READY datasets never change: their profiles are kept a while for quotes.
        self._profiles: dict[str, tuple[float, dataset_pb2.Dataset]] = {}

    async def EstimateTraining(
        self, request: trainer_service_pb2.EstimateTrainingRequest, context: Context
    ) -> trainer_service_pb2.EstimateTrainingResponse:
        params = validate_params(request.params, max_threads=self._settings.resolved_num_threads())
        dataset = await self._dataset(request.dataset_id)
        shape, columns_read = table_shape(dataset, request.target_column)
        budget = (
            max(0.0, request.search_budget.ToTimedelta().total_seconds())
            if request.HasField("search_budget")
            else None
        )
        quote = estimate(
            self._costs.costs,
            shape,
            columns_read,
            num_iterations=int(params.get("num_iterations", 0)),
            search=request.search,
            budget_seconds=budget,
            max_trials=max(0, request.search_max_trials) or None,
        )
        limit = self._settings.resolved_memory_limit_bytes()
        response = trainer_service_pb2.EstimateTrainingResponse(
            peak_memory_bytes=quote.peak_memory_bytes,
            trials=quote.trials,
            memory_limit_bytes=limit,
            fits_memory_limit=quote.peak_memory_bytes <= limit,
            basis=quote.basis,
        )
        response.wall_time.FromNanoseconds(int(quote.wall_seconds * 1e9))
        return response

    async def _dataset(self, dataset_id: str) -> dataset_pb2.Dataset:
        if self._datasets is None:
            raise failed_precondition(
                reasons.DATASET_UNAVAILABLE,
                "this Trainer has no DatasetService to read profiles from",
            )
        cached = self._profiles.get(dataset_id)
        if cached is not None and time.monotonic() - cached[0] < PROFILE_CACHE_SECONDS:
            return cached[1]
        try:
            dataset = await self._datasets.get(dataset_id)
        except TrainingFailure as failure:
            raise ServiceError(
                grpc.StatusCode[failure.code], failure.reason, failure.message
            ) from failure
        except DatasetUnavailable as error:
            raise unavailable(reasons.DATASET_UNAVAILABLE, str(error)) from error
        if len(self._profiles) > 1024:
            self._profiles.clear()
        self._profiles[dataset_id] = (time.monotonic(), dataset)
        return dataset

    async def ValidateTrainingParams(
        self, request: trainer_service_pb2.ValidateTrainingParamsRequest, context: Context
    ) -> trainer_service_pb2.ValidateTrainingParamsResponse:
        params = validate_params(request.params, max_threads=self._settings.resolved_num_threads())
        return trainer_service_pb2.ValidateTrainingParamsResponse(params=as_strings(params))

    async def ListModels(
        self, request: trainer_service_pb2.ListModelsRequest, context: Context
    ) -> trainer_service_pb2.ListModelsResponse:
        self._check_serving()
        models, token = await asyncio.to_thread(
            self._catalog.list_models,
            request.page_size,
            request.page_token,
            access.visible_project(),
        )
        return trainer_service_pb2.ListModelsResponse(models=models, next_page_token=token)

    async def GetModel(
        self, request: trainer_service_pb2.GetModelRequest, context: Context
    ) -> model_pb2.Model:
        self._check_serving()
        return await asyncio.to_thread(
            self._catalog.get_model, request.model_name, access.visible_project()
        )

    async def Predict(
        self, request: trainer_service_pb2.PredictRequest, context: Context
    ) -> trainer_service_pb2.PredictResponse:
        self._check_serving()
        rows = self._check_rows(request)
        selector = request.WhichOneof("version_selector")
        version = request.version if selector == "version" else None
        alias = request.alias if selector == "alias" else None
        if version is None and not alias:
            alias = CHAMPION_ALIAS
        # The caller's project's model (tracking/projects.py); a name is checked first,
        # so that no name reaches another project's model.
        validate_model_name(request.model_name)
        name = projects.registry_name(access.visible_project(), request.model_name)
        number = self._versions.known(name, version, alias)
        if number is None:  # first call for this alias or an unloaded version
            number = await asyncio.to_thread(self._versions.resolve, name, version, alias)
        model = self._models.loaded(name, number)
        if model is None:
            model = await asyncio.to_thread(self._models.load, name, number)
        try:
            if rows <= INLINE_PREDICT_ROWS:
                response = predict_rows(model, request)
            else:
                response = await asyncio.to_thread(predict_rows, model, request)
            response.model_name = request.model_name
            return response
        except pyfunc_model.InvalidModelInput as error:
            where = {"column": error.column}
            if error.rows:  # a missing column is missing from every row: no rows to name
                where["rows"] = ",".join(str(row) for row in error.rows)
            raise invalid_argument(error.reason, str(error), **where) from error

    def _check_serving(self) -> None:
        """A `training` Trainer keeps its CPU for jobs: model reads go to the serving ones."""
        if not self._settings.serves_models():
            raise failed_precondition(
                reasons.TRAINER_NOT_SERVING,
                "this Trainer only trains (MODELYARD_TRAINER_ROLE=training); "
                "models are served by Trainers of role `serving` or `all`",
            )

    def _check_rows(self, request: trainer_service_pb2.PredictRequest) -> int:
        """The request's row count, in either form."""
        if request.rows and request.columns:
            raise invalid_argument(
                reasons.PREDICT_ROWS_AND_COLUMNS,
                "give the rows either as `rows` or as `columns`, not both",
            )
        rows = len(request.rows) if request.rows else column_length(request.columns)
        if not rows:
            raise invalid_argument(reasons.PREDICT_ROWS_EMPTY, "rows must hold at least one row")
        if rows > self._settings.max_predict_rows:
            raise invalid_argument(
                reasons.PREDICT_TOO_MANY_ROWS,
                f"{rows} rows; at most {self._settings.max_predict_rows} per call",
                limit=str(self._settings.max_predict_rows),
            )
        return rows


def predict_rows(
    model: LoadedModel, request: trainer_service_pb2.PredictRequest
) -> trainer_service_pb2.PredictResponse:
    """The whole of a Predict once its model is loaded (blocking: run in a thread)."""
    columns: Mapping[str, ColumnValues]
    if request.columns:
        columns, rows = listed_columns(request.columns)
    else:
        columns, rows = rows_columns(request.rows)
    return predict_response(model, model.scorer.score(columns, rows, request.explain))


def column_length(columns: Mapping[str, struct_pb2.ListValue]) -> int:
    """The rows of a column-wise request: every column must hold as many values."""
    lengths = {name: len(listed.values) for name, listed in sorted(columns.items())}
    if not lengths:
        return 0
    expected = next(iter(lengths.values()))
    for name, length in lengths.items():
        if length != expected:
            first = next(iter(lengths))
            raise invalid_argument(
                reasons.PREDICT_COLUMNS_RAGGED,
                f"column {name!r} holds {length} values, column {first!r} {expected}; "
                "every column needs one value per row",
                column=name,
            )
    return expected


def listed_columns(
    columns: Mapping[str, struct_pb2.ListValue],
) -> tuple[dict[str, ColumnValues], int]:
    """A column-wise request's columns, each cell read as `rows_columns` reads it."""
    rows = column_length(columns)
    return {name: _listed_cells(listed, name) for name, listed in columns.items()}, rows


# A ListValue of numbers only is, on the wire, one 11-byte item per value: the
# `values` tag (field 1, length-delimited) and length 9, the `number_value` tag
# (field 2, fixed64), the little-endian double. Read as one array instead of a
# Value object per cell (most of a 1,000-row columns Predict's reading time).
_NUMBER_ITEM = np.dtype([("head", "S3"), ("number", "<f8")])
_NUMBER_HEAD = b"\x0a\x09\x11"


def _listed_cells(listed: struct_pb2.ListValue, column: str) -> ColumnValues:
    numbers = _numbers_only(listed)
    if numbers is None:  # nulls, text, booleans: cell by cell
        return [_cell(value, column, index) for index, value in enumerate(listed.values)]
    not_finite = ~np.isfinite(numbers)
    if not_finite.any():
        index = int(not_finite.argmax())
        _cell(listed.values[index], column, index)  # raises, naming the row
    return numbers


def _numbers_only(listed: struct_pb2.ListValue) -> FloatArray | None:
    encoded = listed.SerializeToString()
    if not encoded or len(encoded) % _NUMBER_ITEM.itemsize:
        return None
    items = np.frombuffer(encoded, dtype=_NUMBER_ITEM)
    if not (items["head"] == _NUMBER_HEAD).all():
        return None
    numbers: FloatArray = items["number"].astype("float64")
    return numbers


def rows_columns(rows: Any) -> tuple[dict[str, list[Any]], int]:
    """Rows as JSON objects → each key's values, one per row (None where a row lacks it).

    A number must be finite: proto3 JSON has no NaN or infinity, yet a double in
    a Struct can hold one (JSON `NaN`, `Infinity` or `1e999` through the gateway,
    or any gRPC client), and it is refused here, naming the row and the column.
    """
    count = len(rows)
    columns: dict[str, list[Any]] = {}
    for index, row in enumerate(rows):
        for column, value in row.fields.items():
            cells = columns.get(column)
            if cells is None:
                cells = columns[column] = [None] * count
            cells[index] = _cell(value, column, index)
    return columns, count


def _cell(value: struct_pb2.Value, column: str, index: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise invalid_argument(
                reasons.PREDICT_VALUE_NOT_FINITE,
                f"column {column!r} at row index {index} holds {number}; numbers must be "
                "finite (write a missing value as null)",
                column=column,
                rows=str(index),
            )
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind in ("struct_value", "list_value"):
        nested = "dict" if kind == "struct_value" else "list"
        raise invalid_argument(
            reasons.PREDICT_VALUE_INVALID,
            f"column {column!r} at row index {index} holds a nested "
            f"{nested}; values must be numbers, text, booleans or null",
            column=column,
            rows=str(index),
        )
    return None  # null, or a Value with nothing set


_FLAG_KINDS = {
    scoring.UNSEEN_CATEGORY: trainer_service_pb2.PredictionFlag.KIND_UNSEEN_CATEGORY,
    scoring.OUT_OF_RANGE: trainer_service_pb2.PredictionFlag.KIND_OUT_OF_RANGE,
    scoring.ALL_MISSING: trainer_service_pb2.PredictionFlag.KIND_ALL_MISSING,
}


def predict_response(model: LoadedModel, scored: RowScores) -> trainer_service_pb2.PredictResponse:
    class_labels = model.spec.get("class_labels") or []
    counts = scored.flags.counts()
    explained = scored.explanations
    response = trainer_service_pb2.PredictResponse(
        model_name=model.name,
        model_version=model.version,
        class_names=[pyfunc_model.label_text(label) for label in class_labels],
        feature_names=explained.feature_names if explained is not None else [],
        flag_counts=trainer_service_pb2.PredictionFlagCounts(
            flagged_rows=counts.flagged_rows,
            unseen_category_rows=counts.unseen_category_rows,
            out_of_range_rows=counts.out_of_range_rows,
            all_missing_rows=counts.all_missing_rows,
        ),
    )
    probabilities = scored.probabilities.tolist() if scored.probabilities is not None else None
    flagged = scored.flags.flagged()
    # Each prediction is made in place (`add()`): a message built apart and then
    # passed in is copied, and so was its value; 1,000 rows took ~3x as long.
    add = response.predictions.add
    for index, value in enumerate(scored.values):
        prediction = add()
        _set_value(prediction.value, value)
        if probabilities is not None:
            prediction.probabilities.extend(probabilities[index])
        if flagged[index]:
            for kind, column in scored.flags.row_flags(index):
                prediction.flags.add(kind=_FLAG_KINDS[kind], column=column)
        if explained is not None:
            prediction.explanations.extend(_explanations(explained, index))
    return response


def _explanations(
    explained: scoring.Explanations, row: int
) -> list[trainer_service_pb2.Explanation]:
    return [
        trainer_service_pb2.Explanation(
            class_name=class_name,
            base_value=float(explained.base_values[row, k]),
            contributions=explained.contributions[row, k].tolist(),
            raw_score=float(explained.raw_scores[row, k]),
        )
        for k, class_name in enumerate(explained.class_names)
    ]


def _set_value(target: struct_pb2.Value, value: Any) -> None:
    if type(value) is str:  # a class label, the common case
        target.string_value = value
    elif isinstance(value, bool | np.bool_):
        target.bool_value = bool(value)
    elif isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if math.isnan(number):
            target.null_value = struct_pb2.NULL_VALUE
        else:
            target.number_value = number
    else:
        target.string_value = str(value)
