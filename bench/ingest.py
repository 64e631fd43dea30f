"""Ingest benchmark: CSV upload to READY over gRPC and through the gateway, S3 blob store.

    python -m bench.ingest [--sizes 100,500,2100] [--repeat 3] [--work-dir DIR]

For each size it generates a CSV (25 numeric and 3 string columns; the "500"
one is 477 MB with 1M rows, the "2100" one about 2 GB with 4.2M rows; each is
deleted once measured, never kept), then measures, in the same run and against
the same moto S3 server, `--repeat` times in turn (medians shown; once above
1 GB):

- the baseline: boto3 `upload_file` of the file + `pyarrow.csv.read_csv` of it;
- an upload over gRPC (1 MiB chunks) until the dataset is READY;
- an upload through the gateway (`POST /v1/datasets`, body streamed), when a
  gateway (`python -m gateway`) is there (its HTTP client, like the baseline's
  boto3 client, is made before the clock starts);

with the peak RSS of the Dataset service and of the gateway during each
upload, and the CPU seconds (user + system, median of the runs) that the Dataset
service, the moto S3 server, the gateway and the bench process itself used
during each measurement: all of them share the machine's cores, so a ratio that
misses shows here whose CPU the difference is. Beside each upload, the Dataset
service's own split of it (median of the runs, from its "dataset ready" log
line): when the last byte arrived, and how much longer storing the original and
finishing the conversion took. It then reads the largest dataset into pandas
through `ReadDataset` (each response decoded as it arrives), next to reading
its Parquet copy directly (GET from S3 + `pq.read_table`, after the
`GetParquetAccess` a client reading it itself calls first: that joins its
segments into one object).
Targets, printed under the table with the figures measured: upload → READY
<= 1.5x baseline; Dataset service peak RSS <= 400 MiB and flat (within 15 %)
from the smallest file to the largest; gateway peak RSS <= 150 MiB;
ReadDataset -> pandas <= 2x the direct Parquet read. MODELYARD_DATASET_*
variables of the environment are passed to the Dataset service (to try
other settings).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import grpc
import httpx
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from devstack.components import S3Server, start_s3
from devstack.processes import ManagedProcess, free_port, port_open
from devstack.stack import grpc_serving
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.server import CHANNEL_OPTIONS

MB = 1_000_000
MiB = 1024 * 1024
CHUNK_BYTES = 1 * MiB
DATASET_BUCKET = "modelyard-datasets"
BASELINE_BUCKET = "bench-baseline"
ROWS_PER_MB = 2_000  # about 500 bytes a row
TARGET_RATIO = 1.5
TARGET_DATASET_RSS = 400
TARGET_GATEWAY_RSS = 150
READ_REPEAT = 3

T = TypeVar("T")


# -- data -------------------------------------------------------------------------------


def generate_csv(path: Path, rows: int, seed: int = 7) -> None:
    """25 numeric columns (5 integer, 20 float) and 3 string columns, written in slices."""
    rng = np.random.default_rng(seed)
    categories = np.array(
        [f"segment-{name}" for name in ("retail", "wholesale", "online", "partner", "public")]
    )
    regions = np.array(["-north", "-south", "-east", "-west", "-central"])
    slice_rows = 100_000
    with pacsv.CSVWriter(str(path), _schema()) as writer:
        for start in range(0, rows, slice_rows):
            count = min(slice_rows, rows - start)
            columns: dict[str, Any] = {}
            for index in range(25):
                if index % 5 == 0:
                    columns[f"n{index}"] = rng.integers(-1_000_000_000, 1_000_000_000, count)
                else:
                    columns[f"n{index}"] = rng.normal(1000.0, 250.0, count)
            columns["category"] = categories[rng.integers(0, len(categories), count)]
            cities = np.char.add("city-", rng.integers(0, 20_000, count).astype(str))
            columns["city"] = np.char.add(cities, regions[rng.integers(0, len(regions), count)])
            ids = np.arange(start, start + count).astype(str)
            columns["customer_id"] = np.char.add("customer-", np.char.zfill(ids, 10))
            writer.write_table(pa.table(columns, schema=_schema()))


def _schema() -> pa.Schema:
    numeric = [
        pa.field(f"n{index}", pa.int64() if index % 5 == 0 else pa.float64()) for index in range(25)
    ]
    strings = [pa.field(name, pa.string()) for name in ("category", "city", "customer_id")]
    return pa.schema(numeric + strings)


# -- measuring ---------------------------------------------------------------------------


# The processes whose CPU seconds the table shows, in its order.
CPU_PROCESSES = ("dataset", "s3", "gateway", "bench")


class PeakRss:
    """Samples the RSS of some processes every 20 ms while a block runs, and
    the CPU seconds each used over the block."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._processes = {
            name: psutil.Process(pid) for name, pid in pids.items() if pid is not None
        }
        self.peaks: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def _cpu_seconds(self) -> dict[str, float]:
        seconds = {}
        for name, process in self._processes.items():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds[name] = times.user + times.system
        return seconds

    @contextmanager
    def watch(self) -> Iterator[PeakRss]:
        self.peaks = {name: 0.0 for name in self._processes}
        cpu_before = self._cpu_seconds()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for name, process in self._processes.items():
                    try:
                        rss = process.memory_info().rss / MiB
                    except psutil.Error:
                        continue
                    self.peaks[name] = max(self.peaks[name], rss)
                stop.wait(0.02)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            cpu_after = self._cpu_seconds()
            self.cpu = {
                name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before
            }


def timed(work: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


@dataclass
class Row:
    size: str
    what: str
    seconds: float | None
    megabytes: float
    baseline: float | None = None
    dataset_rss: float | None = None
    gateway_rss: float | None = None
    note: str = ""
    cpu: dict[str, float] | None = None

    def cpu_cell(self) -> str:
        if not self.cpu:
            return ""
        return " / ".join(
            f"{self.cpu[name]:.2f}" if name in self.cpu else "-" for name in CPU_PROCESSES
        )

    def cells(self) -> list[str]:
        if self.seconds is None:
            return [self.size, self.what, "-", "-", "-", "-", "-", "", self.note]
        ratio = f"{self.seconds / self.baseline:.2f}x" if self.baseline else ""
        return [
            self.size,
            self.what,
            f"{self.seconds:.2f}",
            f"{self.megabytes / self.seconds:.0f}",
            ratio,
            f"{self.dataset_rss:.0f}" if self.dataset_rss else "",
            f"{self.gateway_rss:.0f}" if self.gateway_rss else "",
            self.cpu_cell(),
            self.note,
        ]


def print_table(rows: list[Row]) -> None:
    header = [
        "file",
        "what",
        "wall s",
        "MB/s",
        "vs base",
        "dataset RSS MiB",
        "gateway RSS MiB",
        "CPU s: " + " / ".join(CPU_PROCESSES),
        "",
    ]
    table = [header, *[row.cells() for row in rows]]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


# -- the stack under test -------------------------------------------------------------------


@dataclass
class Bench:
    work_dir: Path
    s3: S3Server
    token: str
    dataset: ManagedProcess
    dataset_address: str
    gateway: ManagedProcess | None
    gateway_url: str | None
    api_token: str

    def s3_client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint_url,
            region_name=self.s3.region,
            aws_access_key_id=self.s3.access_key_id,
            aws_secret_access_key=self.s3.secret_access_key,
        )

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]


def start_bench(work_dir: Path) -> Bench:
    s3 = start_s3(work_dir)
    try:
        return _start_services(work_dir, s3)
    except BaseException:
        s3.process.stop()
        raise


def _start_services(work_dir: Path, s3: S3Server) -> Bench:
    token = secrets.token_urlsafe(24)
    api_token = secrets.token_urlsafe(24)
    common = {
        "MODELYARD_SERVICE_TOKEN": token,
        "MODELYARD_STATE_DIR": str(work_dir / "state"),
        # INFO: the Dataset service's "dataset ready" line gives its own split of each upload.
        "MODELYARD_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "PYTHONUNBUFFERED": "1",
    }
    address = f"127.0.0.1:{free_port()}"
    dataset = ManagedProcess(
        name="dataset",
        command=[sys.executable, "-m", "services.dataset"],
        env=common
        | {
            "MODELYARD_DATASET_LISTEN_ADDRESS": address,
            "MODELYARD_DATASET_DATABASE_URL": f"sqlite:///{work_dir / 'dataset.db'}",
            "MODELYARD_DATASET_BLOB_STORE": "s3",
            "MODELYARD_DATASET_S3_BUCKET": DATASET_BUCKET,
            "MODELYARD_DATASET_S3_ENDPOINT_URL": s3.endpoint_url,
            "MODELYARD_DATASET_S3_REGION": s3.region,
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        }
        | _dataset_overrides(),
        log_path=work_dir / "logs" / "dataset.log",
    ).start()
    bench = Bench(work_dir, s3, token, dataset, address, None, None, api_token)
    try:
        dataset.wait_until(lambda: grpc_serving(address), timeout=120)
        if importlib.util.find_spec("gateway.__main__") is not None:
            start_gateway(bench, common)
    except BaseException:
        stop_bench(bench)
        raise
    return bench


def _dataset_overrides() -> dict[str, str]:
    """MODELYARD_DATASET_* settings of this environment, to try other settings."""
    return {
        name: value for name, value in os.environ.items() if name.startswith("MODELYARD_DATASET_")
    }


def start_gateway(bench: Bench, common: dict[str, str]) -> None:
    port = free_port()
    gateway = ManagedProcess(
        name="gateway",
        command=[sys.executable, "-m", "gateway"],
        env=common
        | {
            "MODELYARD_GATEWAY_HOST": "127.0.0.1",
            "MODELYARD_GATEWAY_PORT": str(port),
            "MODELYARD_GATEWAY_DATASET_SERVICE_ADDRESS": bench.dataset_address,
            "MODELYARD_GATEWAY_JOBS_SERVICE_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELYARD_GATEWAY_TRAINER_SERVICE_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELYARD_GATEWAY_API_TOKENS": bench.api_token,
            "MODELYARD_GATEWAY_DEV_MODE": "false",
        },
        log_path=bench.work_dir / "logs" / "gateway.log",
    ).start()
    try:
        gateway.wait_until(lambda: port_open("127.0.0.1", port), timeout=60)
    except (RuntimeError, TimeoutError) as error:
        print(f"gateway did not start: {str(error).splitlines()[0]}")
        gateway.stop()
        return
    bench.gateway, bench.gateway_url = gateway, f"http://127.0.0.1:{port}"


def stop_bench(bench: Bench) -> None:
    for process in (bench.gateway, bench.dataset, bench.s3.process):
        if process is not None:
            process.stop()


# -- the measurements ----------------------------------------------------------------------


def baseline(bench: Bench, path: Path) -> tuple[float, float]:
    client = bench.s3_client()
    client.create_bucket(Bucket=BASELINE_BUCKET)
    _, upload_seconds = timed(lambda: client.upload_file(str(path), BASELINE_BUCKET, path.name))
    client.delete_object(Bucket=BASELINE_BUCKET, Key=path.name)
    _, read_seconds = timed(lambda: pacsv.read_csv(path))
    return upload_seconds, read_seconds


async def _chunks_of(path: Path, display_name: str) -> AsyncIterator[Any]:
    yield dataset_service_pb2.UploadDatasetRequest(
        header=dataset_service_pb2.UploadDatasetHeader(display_name=display_name)
    )
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield dataset_service_pb2.UploadDatasetRequest(chunk=chunk)


async def upload_grpc(bench: Bench, path: Path) -> dataset_pb2.Dataset:
    async with grpc.aio.insecure_channel(bench.dataset_address, options=CHANNEL_OPTIONS) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        dataset: dataset_pb2.Dataset = await stub.UploadDataset(
            _chunks_of(path, f"bench-grpc-{path.stem}"), metadata=bench.metadata(), timeout=1800
        )
        return dataset


def upload_gateway(bench: Bench, path: Path, client: httpx.Client) -> str:
    """`POST /v1/datasets` with the file as the body, streamed; the dataset's id."""
    assert bench.gateway_url is not None

    def body() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    response = client.post(
        f"{bench.gateway_url}/v1/datasets",
        params={"displayName": f"bench-gateway-{path.stem}"},
        content=body(),
        headers={"Content-Type": "text/csv", "Authorization": f"Bearer {bench.api_token}"},
        timeout=1800,
    )
    response.raise_for_status()
    state = str(response.json().get("state"))
    if state not in ("READY", "3"):
        raise RuntimeError(f"gateway upload ended in state {state}")
    return str(response.json().get("datasetId") or response.json().get("dataset_id"))


async def read_grpc(bench: Bench, dataset_id: str) -> pd.DataFrame:
    """The dataset as a client should read it: each response decoded as it arrives.

    The contract puts the schema message in the first response and one record batch
    in each later one, so each decodes on its own, without a copy (as the Trainer
    reads). Joining every response's bytes into one buffer first copied the whole
    stream once more: at 477 MB, 261 MB.
    """
    schema: pa.Schema | None = None
    batches: list[pa.RecordBatch] = []
    async with grpc.aio.insecure_channel(bench.dataset_address, options=CHANNEL_OPTIONS) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        request = dataset_service_pb2.ReadDatasetRequest(dataset_id=dataset_id)
        async for response in stub.ReadDataset(request, metadata=bench.metadata(), timeout=600):
            message = pa.py_buffer(response.arrow_ipc)
            if schema is None:
                schema = pa.ipc.read_schema(message)
            else:
                batches.append(pa.ipc.read_record_batch(message, schema))
    if schema is None:
        raise RuntimeError("ReadDataset sent no schema")
    frame: pd.DataFrame = pa.Table.from_batches(batches, schema=schema).to_pandas()
    return frame


async def ask_parquet_access(bench: Bench, dataset_id: str) -> None:
    """What a client reading the Parquet copy itself calls first (and, the first time,
    what makes the Dataset service join the copy's segments into one object)."""
    async with grpc.aio.insecure_channel(bench.dataset_address, options=CHANNEL_OPTIONS) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        request = dataset_service_pb2.GetParquetAccessRequest(dataset_id=dataset_id)
        await stub.GetParquetAccess(request, metadata=bench.metadata(), timeout=600)


def read_parquet_directly(bench: Bench, dataset_id: str) -> pd.DataFrame:
    body = bench.s3_client().get_object(
        Bucket=DATASET_BUCKET, Key=f"datasets/{dataset_id}/data.parquet"
    )["Body"]
    frame: pd.DataFrame = pq.read_table(io.BytesIO(body.read())).to_pandas()
    return frame


@dataclass
class Samples:
    """Wall times of repeated runs, and the highest RSS seen in any of them."""

    seconds: list[float]
    dataset_rss: float = 0.0
    gateway_rss: float = 0.0
    cpu_runs: list[dict[str, float]] = field(default_factory=list)
    phases: list[ServerPhases] = field(default_factory=list)

    @property
    def cpu(self) -> dict[str, float]:
        """Each process's median CPU seconds over the runs."""
        names = {name for run in self.cpu_runs for name in run}
        return {
            name: statistics.median(run.get(name, 0.0) for run in self.cpu_runs) for name in names
        }

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        if len(self.seconds) < 2:
            return ""
        return f"median of {len(self.seconds)}: {min(self.seconds):.2f}-{max(self.seconds):.2f} s"

    def note(self, *lead: str) -> str:
        """`lead`, the spread of the runs and the service's median split of them."""
        parts = [*lead, self.spread()]
        if self.phases:
            parts.append(ServerPhases.median_of(self.phases).describe())
        return "; ".join(part for part in parts if part)

    def add(self, seconds: float, peaks: dict[str, float], cpu: dict[str, float]) -> None:
        self.seconds.append(seconds)
        self.cpu_runs.append(cpu)
        self.dataset_rss = max(self.dataset_rss, peaks.get("dataset", 0.0))
        self.gateway_rss = max(self.gateway_rss, peaks.get("gateway", 0.0))


@dataclass(frozen=True)
class ServerPhases:
    """The Dataset service's own split of one upload (its "dataset ready" log line):
    until the last byte was received, then until the original was stored, then until
    the conversion ended. Where the time after the last byte goes is what a ratio
    that misses needs."""

    receive: float
    store: float
    convert: float

    def describe(self) -> str:
        return (
            f"service: last byte at {self.receive:.2f} s, original stored +{self.store:.2f} s, "
            f"converted +{self.convert:.2f} s"
        )

    @staticmethod
    def median_of(runs: list[ServerPhases]) -> ServerPhases:
        return ServerPhases(
            statistics.median(run.receive for run in runs),
            statistics.median(run.store for run in runs),
            statistics.median(run.convert for run in runs),
        )


def last_upload_phases(bench: Bench) -> ServerPhases | None:
    """The split of the service's latest upload; None when it logs no INFO lines."""
    log = bench.work_dir / "logs" / "dataset.log"
    if not log.exists():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"dataset ready"' not in line:
            continue
        try:
            fields = json.loads(line)
            return ServerPhases(
                fields["receive_seconds"], fields["store_seconds"], fields["convert_seconds"]
            )
        except (ValueError, KeyError):
            return None
    return None


async def delete_dataset(bench: Bench, dataset_id: str) -> None:
    async with grpc.aio.insecure_channel(bench.dataset_address, options=CHANNEL_OPTIONS) as channel:
        stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        request = dataset_service_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
        await stub.DeleteDataset(request, metadata=bench.metadata(), timeout=600)


def measure_size(
    bench: Bench, path: Path, label: str, rss: PeakRss, repeat: int
) -> tuple[list[Row], str, Samples]:
    """Baseline, gRPC and gateway uploads, `repeat` times in turn (so that a busy
    moment of the machine hits all three alike); medians are reported."""
    megabytes = path.stat().st_size / MB
    upload, read, total = Samples([]), Samples([]), Samples([])
    grpc_runs, gateway_runs = Samples([]), Samples([])
    dataset_id, row_count, gateway_note = "", 0, ""
    for _ in range(repeat):
        with rss.watch():
            upload_seconds, read_seconds = baseline(bench, path)
        upload.seconds.append(upload_seconds)
        read.seconds.append(read_seconds)
        total.add(upload_seconds + read_seconds, {}, rss.cpu)
        with rss.watch():
            dataset, seconds = timed(lambda: asyncio.run(upload_grpc(bench, path)))
        grpc_runs.add(seconds, rss.peaks, rss.cpu)
        if (phases := last_upload_phases(bench)) is not None:
            grpc_runs.phases.append(phases)
        row_count = dataset.row_count
        if dataset_id:
            asyncio.run(delete_dataset(bench, dataset_id))
        dataset_id = dataset.dataset_id  # the last one is read below
        gateway_note = gateway_run(bench, path, rss, gateway_runs)
    base = total.median
    rows = [
        Row(label, "baseline: boto3 upload_file", upload.median, megabytes, note=upload.spread()),
        Row(label, "baseline: pyarrow.csv.read_csv", read.median, megabytes, note=read.spread()),
        Row(label, "baseline: total", base, megabytes, base, note=total.spread(), cpu=total.cpu),
        Row(
            label,
            "gRPC UploadDataset → READY",
            grpc_runs.median,
            megabytes,
            baseline=base,
            dataset_rss=grpc_runs.dataset_rss,
            note=grpc_runs.note(f"{row_count} rows"),
            cpu=grpc_runs.cpu,
        ),
    ]
    what = "gateway POST /v1/datasets → READY"
    if gateway_runs.seconds:
        rows.append(
            Row(
                label,
                what,
                gateway_runs.median,
                megabytes,
                baseline=base,
                dataset_rss=gateway_runs.dataset_rss,
                gateway_rss=gateway_runs.gateway_rss,
                note=gateway_runs.note(),
                cpu=gateway_runs.cpu,
            )
        )
    else:
        rows.append(Row(label, what, None, megabytes, note=gateway_note))
    figures = Samples(
        [grpc_runs.median / base],
        dataset_rss=max(grpc_runs.dataset_rss, gateway_runs.dataset_rss),
        gateway_rss=gateway_runs.gateway_rss,
    )
    if gateway_runs.seconds:
        figures.seconds.append(gateway_runs.median / base)
    return rows, dataset_id, figures


def gateway_run(bench: Bench, path: Path, rss: PeakRss, samples: Samples) -> str:
    """One upload through the gateway into `samples`; why not, when it could not run."""
    if bench.gateway is None:
        return "gateway unavailable"
    try:
        # Made before the clock starts, as the baseline's boto3 client is: making an httpx
        # client takes 25-35 ms (its TLS context), which is no part of an upload.
        with httpx.Client() as client, rss.watch():
            dataset_id, seconds = timed(lambda: upload_gateway(bench, path, client))
    except (httpx.HTTPError, RuntimeError, ValueError) as error:
        return f"gateway failed: {error}"
    samples.add(seconds, rss.peaks, rss.cpu)
    if (phases := last_upload_phases(bench)) is not None:
        samples.phases.append(phases)
    asyncio.run(delete_dataset(bench, dataset_id))
    return ""


def measure_read(bench: Bench, dataset_id: str, label: str, rss: PeakRss) -> list[Row]:
    """Both reads READ_REPEAT times in turn (medians shown): a single direct read of
    the same file varied by 2x between runs on a busy machine."""
    asyncio.run(ask_parquet_access(bench, dataset_id))
    direct_runs, read_runs = Samples([]), Samples([])
    for _ in range(READ_REPEAT):
        direct, seconds = timed(lambda: read_parquet_directly(bench, dataset_id))
        direct_runs.seconds.append(seconds)
        with rss.watch():
            frame, seconds = timed(lambda: asyncio.run(read_grpc(bench, dataset_id)))
        read_runs.seconds.append(seconds)
        if frame.shape != direct.shape:
            raise RuntimeError(f"ReadDataset gave {frame.shape}, the Parquet copy {direct.shape}")
        megabytes = direct.memory_usage(deep=False).sum() / MB
        shape = direct.shape
        del direct, frame  # one frame at a time in memory
    return [
        Row(
            label,
            "direct: S3 GET + pq.read_table → pandas",
            direct_runs.median,
            megabytes,
            note=direct_runs.note(f"{shape[0]} rows x {shape[1]} columns"),
        ),
        Row(
            label,
            "ReadDataset (Arrow IPC) → pandas",
            read_runs.median,
            megabytes,
            baseline=direct_runs.median,
            dataset_rss=rss.peaks.get("dataset"),
            note=read_runs.spread(),
        ),
    ]


def targets_table(results: list[tuple[str, Samples]]) -> list[str]:
    """The issue's targets, each with the measured figure beside it."""
    lines = []
    for label, figures in results:
        worst = max(figures.seconds)
        verdict = "met" if worst <= TARGET_RATIO else "MISSED"
        lines.append(
            f"{label}: upload → READY {worst:.2f}x baseline (worst of gRPC and gateway, "
            f"target <= {TARGET_RATIO}x): {verdict}"
        )
    dataset_peaks = [figures.dataset_rss for _, figures in results]
    highest = max(dataset_peaks)
    lines.append(
        f"Dataset service peak RSS {highest:.0f} MiB (target <= {TARGET_DATASET_RSS} MiB): "
        + ("met" if highest <= TARGET_DATASET_RSS else "MISSED")
    )
    if len(results) > 1:
        first, last = dataset_peaks[0], dataset_peaks[-1]
        growth = (last - first) / first
        lines.append(
            f"Dataset service peak RSS from {results[0][0]} to {results[-1][0]}: "
            f"{first:.0f} → {last:.0f} MiB ({growth:+.0%}, target within ±15 %): "
            + ("met" if abs(growth) <= 0.15 else "MISSED")
        )
    gateway = max(figures.gateway_rss for _, figures in results)
    if gateway:
        lines.append(
            f"gateway peak RSS {gateway:.0f} MiB (target <= {TARGET_GATEWAY_RSS} MiB): "
            + ("met" if gateway <= TARGET_GATEWAY_RSS else "MISSED")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100,500,2100", help="CSV sizes in MB (nominal), comma-separated"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each measurement under 1 GB (medians are shown); 1 above",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    work_dir = arguments.work_dir or Path(tempfile.mkdtemp(prefix="modelyard-bench-ingest-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    results: list[tuple[str, Samples]] = []
    bench = start_bench(work_dir)
    try:
        rss = PeakRss(
            {
                "dataset": bench.dataset.pid,
                "s3": bench.s3.process.pid,
                "gateway": bench.gateway.pid if bench.gateway else None,
                "bench": os.getpid(),
            }
        )
        largest = ("", "")
        for size in sizes:
            path = work_dir / f"bench-{size}mb.csv"
            print(f"generating {path.name} ...", flush=True)
            generate_csv(path, rows=size * ROWS_PER_MB)
            label = f"{path.stat().st_size / MB:.0f} MB"
            repeat = arguments.repeat if size < 1000 else 1
            print(f"measuring {label} ({repeat}x) ...", flush=True)
            size_rows, dataset_id, figures = measure_size(bench, path, label, rss, repeat)
            rows.extend(size_rows)
            results.append((label, figures))
            if largest[1]:
                asyncio.run(delete_dataset(bench, largest[1]))
            largest = (label, dataset_id)
            path.unlink()  # generated, never kept
        rows.extend(measure_read(bench, largest[1], largest[0], rss))
    finally:
        stop_bench(bench)
        if arguments.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print_table(rows)
    print()
    for line in targets_table(results):
        print(line)


if __name__ == "__main__":
    main()
