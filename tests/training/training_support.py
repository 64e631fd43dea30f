"""Helpers of the Trainer's tests: generated tables, a stand-in DatasetService, the
Trainer process, the NATS bus as the Trainer sees it. The fixtures that use them are
in conftest.py; test modules import these from here, never from conftest.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from nats.js.api import ConsumerConfig, DeliverPolicy
from sklearn import datasets

from devstack.components import MlflowServer, NatsServer
from devstack.processes import ManagedProcess, free_port
from devstack.stack import grpc_serving
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import (
    jobs_service_pb2,
    jobs_service_pb2_grpc,
    scoring_job_pb2,
    training_job_pb2,
)
from runtime import nats_access
from runtime.messaging import (
    JOB_EVENTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    job_events_subject,
)
from services.training.model.columns import columns_from_frame

SERVICE_TOKEN = "trainer-tests-service-token"


FINAL_KINDS = ("succeeded", "failed", "cancelled")


def sklearn_csv(directory: Path, name: str, *, string_labels: bool = False) -> Path:
    """A scikit-learn bundled dataset written as CSV (target column `target`)."""
    loader = getattr(datasets, f"load_{name}")
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    if string_labels:
        frame["target"] = np.asarray(bunch.target_names)[bunch.target]
    path = directory / f"{name}{'-labels' if string_labels else ''}.csv"
    frame.to_csv(path, index=False)
    return path


def messy_frame(rows: int = 600, seed: int = 7) -> pd.DataFrame:
    """Categorical, missing, ID-like, constant and date columns, and some missing targets."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue", "violet"], rows)
    size = rng.normal(10, 3, rows)
    size[rng.random(rows) < 0.1] = np.nan
    count = rng.integers(0, 20, rows).astype("float64")
    count[rng.random(rows) < 0.05] = np.nan
    score = (color == "red") * 2.0 + np.nan_to_num(size, nan=10) / 5 + rng.normal(0, 0.7, rows)
    label = np.where(score > np.median(score), "yes", "no").astype(object)
    label[rng.random(rows) < 0.03] = None
    return pd.DataFrame(
        {
            "customer_id": [f"C{100000 + i}" for i in range(rows)],
            "row_number": np.arange(1, rows + 1),
            "color": color,
            "size": size,
            "count": pd.array(count, dtype="Int64"),
            "constant": "same",
            "signup": pd.date_range("2024-01-01", periods=rows, freq="D").strftime("%Y-%m-%d"),
            "flag": rng.random(rows) < 0.5,
            "label": label,
        }
    )


def long_job_csv(directory: Path) -> Path:
    """Enough rows that 10000 boosting rounds take a minute or more: jobs to stop midway."""
    path = directory / "long.csv"
    if not path.exists():
        rng = np.random.default_rng(3)
        frame = pd.DataFrame(rng.normal(size=(100_000, 10)), columns=[f"x{i}" for i in range(10)])
        frame["y"] = frame.x0 + frame.x1 * frame.x2 + rng.normal(size=len(frame))
        frame.to_csv(path, index=False)
    return path


SLOW_PARAMS = {"num_iterations": "10000", "learning_rate": "0.0001", "early_stopping_round": "0"}


ARROW_TYPES = {
    dataset_pb2.Column.DataType.INTEGER: pa.int64(),
    dataset_pb2.Column.DataType.FLOAT: pa.float64(),
    dataset_pb2.Column.DataType.BOOLEAN: pa.bool_(),
    dataset_pb2.Column.DataType.STRING: pa.string(),
    dataset_pb2.Column.DataType.ALL_NULL: pa.string(),
}


@dataclass
class StoredDataset:
    proto: dataset_pb2.Dataset
    table: pa.Table


def dataset_from_csv(path: Path, dataset_id: str, display_name: str) -> StoredDataset:
    """Type the CSV as DatasetService would, and keep it as an Arrow table."""
    raw = path.read_bytes()
    frame = pd.read_csv(io.BytesIO(raw))
    columns = []
    arrays = []
    for info in columns_from_frame(frame):
        data_type: Any = dataset_pb2.Column.DataType.Value(info.type.value)
        if info.name in ("signup",):
            data_type = dataset_pb2.Column.DataType.DATE
        values = frame[info.name]
        if data_type == dataset_pb2.Column.DataType.DATE:
            array = pa.array(pd.to_datetime(values).dt.date, type=pa.date32())
        elif data_type == dataset_pb2.Column.DataType.STRING:
            array = pa.array(values.astype("object").where(values.notna(), None), type=pa.string())
        elif data_type == dataset_pb2.Column.DataType.INTEGER:
            array = pa.array(values.astype("Int64"), type=pa.int64())
        elif data_type == dataset_pb2.Column.DataType.BOOLEAN:
            array = pa.array(values.astype("boolean"), type=pa.bool_())
        else:
            array = pa.array(values.astype("float64"), type=ARROW_TYPES[data_type])
        arrays.append(array)
        columns.append(
            dataset_pb2.Column(
                name=info.name,
                data_type=data_type,
                profile=dataset_pb2.ColumnProfile(null_count=int(values.isna().sum())),
            )
        )
    proto = dataset_pb2.Dataset(
        dataset_id=dataset_id,
        display_name=display_name,
        state=dataset_pb2.Dataset.State.READY,
        columns=columns,
        row_count=len(frame),
        size_bytes=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    return StoredDataset(proto, pa.table(arrays, names=[c.name for c in columns]))


class FakeDatasetService(dataset_service_pb2_grpc.DatasetServiceServicer):
    """GetDataset and ReadDataset over datasets registered by the tests."""

    def __init__(self) -> None:
        self.datasets: dict[str, StoredDataset] = {}
        self.reads = 0
        self.parquet_dir: Path | None = None
        # Rows per row group of the Parquet copies GetParquetAccess writes.
        self.row_group_rows = 1000

    def add_csv(self, path: Path, display_name: str | None = None) -> str:
        dataset_id = "ds-" + uuid.uuid4().hex[:12]
        self.datasets[dataset_id] = dataset_from_csv(path, dataset_id, display_name or path.stem)
        return dataset_id

    def _stored(self, dataset_id: str, context: Any) -> StoredDataset:
        stored = self.datasets.get(dataset_id)
        if stored is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no dataset {dataset_id}")
            raise AssertionError("abort raises")
        return stored

    def GetDataset(self, request: Any, context: Any) -> dataset_pb2.Dataset:
        return self._stored(request.dataset_id, context).proto

    def ReadDataset(self, request: Any, context: Any) -> Iterator[Any]:
        stored = self._stored(request.dataset_id, context)
        self.reads += 1
        table = stored.table.select(list(request.columns)) if request.columns else stored.table
        sink = io.BytesIO()
        writer = pa.ipc.new_stream(sink, table.schema)
        yield dataset_service_pb2.ReadDatasetResponse(arrow_ipc=_take(sink))
        for batch in table.to_batches(max_chunksize=request.batch_rows or 65536):
            writer.write_batch(batch)
            yield dataset_service_pb2.ReadDatasetResponse(arrow_ipc=_take(sink))
        # Like DatasetService: no end-of-stream marker, the end of the gRPC stream ends it.

    def GetParquetAccess(self, request: Any, context: Any) -> Any:
        """Like DatasetService on its local blob store: a `file://` URL of the Parquet copy."""
        stored = self._stored(request.dataset_id, context)
        assert self.parquet_dir is not None, "set parquet_dir to serve Parquet copies"
        path = self.parquet_dir / f"{request.dataset_id}.parquet"
        if not path.exists():
            pq.write_table(stored.table, path, row_group_size=self.row_group_rows)
        return dataset_service_pb2.GetParquetAccessResponse(
            dataset_id=request.dataset_id,
            url=path.as_uri(),
            size_bytes=path.stat().st_size,
            row_count=stored.table.num_rows,
        )


def _take(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


class FakeJobsService(jobs_service_pb2_grpc.JobsServiceServicer):
    """GetTrainingJob, which the Trainer asks before training: the jobs Bus.submit made."""

    def __init__(self) -> None:
        self.known: set[str] = set()

    def GetTrainingJob(
        self, request: jobs_service_pb2.GetTrainingJobRequest, context: grpc.ServicerContext
    ) -> training_job_pb2.TrainingJob:
        if request.job_id not in self.known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return training_job_pb2.TrainingJob(
            job_id=request.job_id, state=training_job_pb2.TrainingJob.QUEUED
        )

    def GetScoringJob(
        self, request: jobs_service_pb2.GetScoringJobRequest, context: grpc.ServicerContext
    ) -> scoring_job_pb2.ScoringJob:
        if request.job_id not in self.known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return scoring_job_pb2.ScoringJob(job_id=request.job_id)


@dataclass
class DatasetServer:
    """The Trainer's stand-in neighbours on one server: DatasetService, and the JobsService
    that the Trainer asks whether a job exists."""

    service: FakeDatasetService
    address: str
    server: grpc.Server
    jobs: FakeJobsService


@dataclass
class TrainerProcess:
    process: ManagedProcess
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(lambda: grpc_serving(self.address), timeout=120)

    def stop(self) -> None:
        self.process.stop()


def trainer_env(
    work_dir: Path,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    dataset_address: str,
    address: str,
    **overrides: str,
) -> dict[str, str]:
    env = {
        "MODELYARD_SERVICE_TOKEN": SERVICE_TOKEN,
        "MODELYARD_STATE_DIR": str(work_dir / "state"),
        "MODELYARD_LOG_LEVEL": "INFO",
        "MODELYARD_SHUTDOWN_GRACE_SECONDS": "3",
        "PYTHONUNBUFFERED": "1",
        "MODELYARD_TRAINER_LISTEN_ADDRESS": address,
        **nats_server.env("TRAINER", nats_access.TRAINER),
        "MODELYARD_TRAINER_DATASET_SERVICE_ADDRESS": dataset_address,
        # The same stand-in server answers GetTrainingJob (DatasetServer).
        "MODELYARD_TRAINER_JOBS_SERVICE_ADDRESS": dataset_address,
        **mlflow_server.trainer_env(),
        "MODELYARD_TRAINER_WORK_DIR": str(work_dir / "scratch"),
        "MODELYARD_TRAINER_ACK_WAIT_SECONDS": "30",
        "MODELYARD_TRAINER_MLFLOW_EXPERIMENT_NAME": "modelyard-tests",
        "MODELYARD_TRAINER_PROGRESS_INTERVAL_SECONDS": "0.2",
        "MODELYARD_TRAINER_NUM_THREADS": "2",
    }
    return env | overrides


def start_trainer(
    work_dir: Path,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    dataset_address: str,
    name: str = "trainer",
    **overrides: str,
) -> TrainerProcess:
    import sys

    address = f"127.0.0.1:{free_port()}"
    log_path = work_dir / "logs" / f"{name}.log"
    env = trainer_env(work_dir, nats_server, mlflow_server, dataset_address, address, **overrides)
    process = ManagedProcess(
        name=name,
        command=[sys.executable, "-m", "services.training"],
        env=env,
        log_path=log_path,
    )
    trainer = TrainerProcess(process=process, address=address, log_path=log_path, env=env)
    trainer.start()
    return trainer


class Bus:
    def __init__(self, nc: Any, jobs: FakeJobsService) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.jobs = jobs

    async def submit(
        self,
        dataset_id: str,
        target: str,
        *,
        task: Any = training_job_pb2.TrainingJob.Task.AUTO,
        params: dict[str, str] | None = None,
        model_name: str = "",
        max_run_seconds: float = 0,
        job_id: str | None = None,
        message_id: str | None = None,
        search: training_job_pb2.TrainingSearch | None = None,
        replay: dispatch_pb2.ReplayConfiguration | None = None,
    ) -> str:
        """Publish a TrainingRequest exactly as JobsService's relay does, for a job the
        stand-in JobsService then knows."""
        job_id = job_id or "job-" + uuid.uuid4().hex[:16]
        self.jobs.known.add(job_id)
        request = dispatch_pb2.TrainingRequest(
            job_id=job_id,
            dataset_id=dataset_id,
            target_column=target,
            task=task,
            params=params or {},
            registered_model_name=model_name,
        )
        if max_run_seconds:
            request.max_run_duration.CopyFrom(duration_pb2.Duration(seconds=int(max_run_seconds)))
        request.create_time.GetCurrentTime()
        if search is not None:
            request.search.CopyFrom(search)
        if replay is not None:
            request.replay.CopyFrom(replay)
        await self.js.publish(
            TRAINING_REQUESTS_SUBJECT,
            request.SerializeToString(),
            headers={"Nats-Msg-Id": message_id or job_id},
        )
        return job_id

    async def events(self, job_id: str) -> list[dispatch_pb2.JobEvent]:
        """Every event stored for the job so far, in order."""
        subscription = await self.js.subscribe(
            job_events_subject(job_id),
            stream=JOB_EVENTS_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            ordered_consumer=True,
        )
        found: list[dispatch_pb2.JobEvent] = []
        try:
            while True:
                try:
                    message = await subscription.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    return found  # no event at all yet
                found.append(dispatch_pb2.JobEvent.FromString(message.data))
                if message.metadata.num_pending == 0:
                    return found  # caught up (events may keep coming while a job trains)
        finally:
            await subscription.unsubscribe()

    async def wait_final(self, job_id: str, within: float = 120) -> list[dispatch_pb2.JobEvent]:
        """The job's events once one of them is final."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = await self.events(job_id)
            if any(event.WhichOneof("kind") in FINAL_KINDS for event in found):
                return found
            await asyncio.sleep(0.3)
        raise AssertionError(f"job {job_id} reached no final event: {await self.events(job_id)}")

    async def wait_for(self, job_id: str, kind: str, within: float = 60) -> dispatch_pb2.JobEvent:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for event in await self.events(job_id):
                if event.WhichOneof("kind") == kind:
                    return event
                if event.WhichOneof("kind") in FINAL_KINDS:
                    raise AssertionError(f"job {job_id} ended before any {kind} event: {event}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} published no {kind} event")


def final_event(events: list[dispatch_pb2.JobEvent]) -> dispatch_pb2.JobEvent:
    finals = [event for event in events if event.WhichOneof("kind") in FINAL_KINDS]
    assert len(finals) == 1, f"expected exactly one final event, got {finals}"
    return finals[0]


def reason_of(event: dispatch_pb2.JobEvent) -> str:
    """The ErrorInfo reason of a FAILED event, or "" when it carries none."""
    for detail in event.failed.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""
