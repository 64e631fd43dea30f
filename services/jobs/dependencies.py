"""The checks CreateTrainingJob and CreateScoringJob ask other services for, before it queues
anything: does the dataset exist, is it READY, does it have the target column
(DatasetService.GetDataset, or LookupDataset for a dataset named by its display
name or `name@version`); are the parameter overrides allowed
(TrainerService.ValidateTrainingParams); which version a scoring job's model
name and version or alias mean (TrainerService.GetModel). Each call has its own
deadline.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2

from modelyard.dataset.v1.dataset_pb2 import Dataset
from modelyard.dataset.v1.dataset_service_pb2 import GetDatasetRequest, LookupDatasetRequest
from modelyard.dataset.v1.dataset_service_pb2_grpc import DatasetServiceStub
from modelyard.training.v1.model_pb2 import Model
from modelyard.training.v1.trainer_service_pb2 import (
    EstimateTrainingRequest,
    EstimateTrainingResponse,
    GetModelRequest,
    ValidateTrainingParamsRequest,
)
from modelyard.training.v1.trainer_service_pb2_grpc import TrainerServiceStub
from runtime import access
from runtime.errors import (
    ServiceError,
    code_from_number,
    failed_precondition,
    invalid_argument,
    not_found,
    status_from_rpc_error,
    status_reason,
    unavailable,
)
from runtime.limits import echo
from services.jobs import reasons

logger = logging.getLogger("modelyard.jobs.dependencies")

COLUMNS_LISTED = 8
# Dataset ids are 32 hexadecimal characters; longer references can only be names.
MAX_DATASET_ID_CHARS = 32


class PassThroughError(ServiceError):
    """Another service's error, returned to our caller exactly as it was."""

    def __init__(self, status: status_pb2.Status) -> None:
        code = code_from_number(status.code)
        super().__init__(code, status_reason(status) or code.name, status.message)
        self._status = status

    def to_status(self) -> status_pb2.Status:
        return self._status


@dataclass(frozen=True)
class ReadyDataset:
    dataset_id: str
    columns: tuple[str, ...]
    # Rows x columns: whether a create asks the Trainer for a quote (estimate_min_cells).
    cells: int = 0
    display_name: str = ""


class DatasetChecker:
    """Checks a dataset is READY and has a column; finds a dataset named by reference.

    A reference is a dataset id; or a display name, meaning its latest READY
    version; or `name@version`. An id is asked for with GetDataset (which tells a
    dataset that is not READY yet), anything else with LookupDataset.

    A READY dataset's columns never change, so they are kept for `cache_seconds`
    (deleting the dataset is the only change a cached entry can miss). Only
    datasets found by id are cached (a name's latest version changes with every
    upload); concurrent checks of one reference share one call.
    """

    def __init__(self, stub: DatasetServiceStub, timeout: float, cache_seconds: float) -> None:
        self._stub = stub
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        # Keyed by (the caller's project, the dataset reference).
        self._cache: dict[tuple[str | None, str], tuple[float, ReadyDataset]] = {}
        self._in_flight: dict[tuple[str | None, str], asyncio.Task[ReadyDataset]] = {}

    async def check(self, dataset_id: str, target_column: str) -> ReadyDataset:
        dataset = await self._ready_dataset(dataset_id)
        if target_column not in dataset.columns:
            raise _column_not_found(dataset, target_column)
        return dataset

    async def check_columns(self, dataset_id: str, columns: list[str]) -> ReadyDataset:
        """The READY dataset, refused when it lacks one of `columns` (a scoring job's
        pass-through columns)."""
        dataset = await self._ready_dataset(dataset_id)
        missing = [name for name in columns if name not in dataset.columns]
        if missing:
            raise invalid_argument(
                reasons.SCORING_COLUMN_NOT_FOUND,
                f"dataset {dataset.dataset_id} has no column(s) "
                f"{echo(', '.join(missing))} to pass through",
                dataset_id=dataset.dataset_id,
                column=echo(",".join(missing)),
            )
        return dataset

    async def _ready_dataset(self, dataset_id: str) -> ReadyDataset:
        # Per project: the same id (or name) is another project's dataset, or none.
        key = (access.visible_project(), dataset_id)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(dataset_id))
            self._in_flight[key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        # shield: one caller going away must not cancel the call the others wait for
        return await asyncio.shield(task)

    async def _fetch(self, dataset_id: str) -> ReadyDataset:
        try:
            dataset = await self._find(dataset_id)
        except grpc.aio.AioRpcError as error:
            raise _dataset_error(dataset_id, error) from error
        if dataset.state != Dataset.READY:
            state = Dataset.State.Name(dataset.state)
            raise failed_precondition(
                reasons.DATASET_NOT_READY,
                f"dataset {dataset_id} is {state}, not READY: only a READY dataset can be "
                "trained on",
                dataset_id=dataset_id,
                state=state,
            )
        ready = ReadyDataset(
            dataset.dataset_id,
            tuple(column.name for column in dataset.columns),
            cells=int(dataset.row_count) * len(dataset.columns),
            display_name=dataset.display_name,
        )
        if self._cache_seconds > 0 and dataset.dataset_id == dataset_id:
            self._cache[(access.visible_project(), dataset_id)] = (time.monotonic(), ready)
            self._evict_expired()
        return ready

    async def _find(self, reference: str) -> Dataset:
        """The dataset by id; failing that, by display name or name@version."""
        if len(reference) <= MAX_DATASET_ID_CHARS:
            try:
                dataset: Dataset = await self._stub.GetDataset(
                    GetDatasetRequest(dataset_id=reference),
                    timeout=self._timeout,
                    metadata=access.outgoing_metadata(),
                )
                return dataset
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        response = await self._stub.LookupDataset(
            LookupDatasetRequest(reference=reference),
            timeout=self._timeout,
            metadata=access.outgoing_metadata(),
        )
        found: Dataset = response.dataset
        return found

    def _evict_expired(self) -> None:
        if len(self._cache) < 1024:
            return
        now = time.monotonic()
        for key in [k for k, (at, _) in self._cache.items() if now - at >= self._cache_seconds]:
            del self._cache[key]


def _dataset_error(dataset_id: str, error: grpc.aio.AioRpcError) -> ServiceError:
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(
            reasons.DATASET_NOT_FOUND,
            f"no dataset has the id or name {dataset_id!r} (a name may end in @version)",
            dataset_id=dataset_id,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return PassThroughError(status_from_rpc_error(error))
    logger.warning(
        "DatasetService.GetDataset failed",
        extra={"dataset_id": dataset_id, "code": code.name, "details": error.details()},
    )
    return unavailable(
        reasons.DATASET_SERVICE_UNAVAILABLE,
        f"the Dataset service could not be asked about dataset {dataset_id} ({code.name}); "
        "retry later",
        dataset_id=dataset_id,
    )


def _column_not_found(dataset: ReadyDataset, column: str) -> ServiceError:
    """Names the missing column and lists the closest (else the first) available ones."""
    close = difflib.get_close_matches(column, dataset.columns, n=COLUMNS_LISTED, cutoff=0.6)
    listed = close + [c for c in dataset.columns if c not in close]
    shown = ", ".join(repr(name) for name in listed[:COLUMNS_LISTED])
    more = len(dataset.columns) - COLUMNS_LISTED
    suffix = f" and {more} more" if more > 0 else ""
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return invalid_argument(
        reasons.TARGET_COLUMN_NOT_FOUND,
        f"dataset {dataset.dataset_id} has no column {column!r}{hint} (columns: {shown}{suffix})",
        dataset_id=dataset.dataset_id,
        column=column,
    )


class ParamsChecker:
    """Asks the Trainer whether parameter overrides are allowed, for a quote
    (EstimateTraining: wall time, peak memory, trials) of a job, and which model
    version a scoring job names (GetModel)."""

    def __init__(self, stub: TrainerServiceStub, timeout: float) -> None:
        self._stub = stub
        self._timeout = timeout

    async def check(self, params: dict[str, str]) -> None:
        if not params:
            return  # nothing to check: no call
        try:
            await self._stub.ValidateTrainingParams(
                ValidateTrainingParamsRequest(params=params), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise PassThroughError(status_from_rpc_error(error)) from error
            logger.warning(
                "TrainerService.ValidateTrainingParams failed",
                extra={"code": error.code().name, "details": error.details()},
            )
            raise unavailable(
                reasons.TRAINER_UNAVAILABLE,
                f"the Trainer could not check the parameters ({error.code().name}); retry later",
            ) from error

    async def quote(self, request: EstimateTrainingRequest) -> EstimateTrainingResponse:
        """The Trainer's estimate; its INVALID_ARGUMENT and FAILED_PRECONDITION (a bad
        param, a dataset it cannot read) pass through, anything else is UNAVAILABLE."""
        try:
            response: EstimateTrainingResponse = await self._stub.EstimateTraining(
                request, timeout=self._timeout
            )
            return response
        except grpc.aio.AioRpcError as error:
            if error.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ):
                raise PassThroughError(status_from_rpc_error(error)) from error
            logger.warning(
                "TrainerService.EstimateTraining failed",
                extra={"code": error.code().name, "details": error.details()},
            )
            raise unavailable(
                reasons.TRAINER_UNAVAILABLE,
                f"the Trainer could not estimate the job ({error.code().name}); retry later",
            ) from error

    async def model_version(self, name: str, version: int, alias: str) -> int:
        """The version `version` (when set) or `alias` names; NOT_FOUND names what is
        missing. Resolved once, at create: the job scores that version even if the
        alias moves while it waits."""
        try:
            model: Model = await self._stub.GetModel(
                GetModelRequest(model_name=name),
                timeout=self._timeout,
                metadata=access.outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found(
                    reasons.MODEL_NOT_FOUND, f"no registered model {name!r}", model_name=name
                ) from error
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise PassThroughError(status_from_rpc_error(error)) from error
            logger.warning(
                "TrainerService.GetModel failed",
                extra={"code": error.code().name, "details": error.details()},
            )
            raise unavailable(
                reasons.TRAINER_UNAVAILABLE,
                f"the Trainer could not look up model {name!r} ({error.code().name}); retry later",
            ) from error
        for found in model.versions:
            if (version and found.version == version) or (not version and alias in found.aliases):
                return int(found.version)
        asked = {"version": str(version)} if version else {"alias": echo(alias)}
        what = " ".join(next(iter(asked.items())))
        raise not_found(
            reasons.MODEL_VERSION_NOT_FOUND,
            f"model {name!r} has no {what}",
            model_name=name,
            **asked,
        )
