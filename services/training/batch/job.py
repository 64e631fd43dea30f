"""One batch scoring run: read the dataset's rows, score them into a Parquet file in the
scratch directory, store that file as a new dataset, delete the file.

Reading and scoring overlap: the record batches are scored in the thread that
decodes the stream while the next bytes arrive, and the stream is bounded (see
`fit.dataset_reader.decode_batches`), so a slow model slows the read instead of
growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from modelyard.dataset.v1 import dataset_pb2
from services.training.batch.output import DatasetWriter
from services.training.batch.scorer import (
    BatchScorer,
    ScoringOptions,
    check_columns,
    columns_to_read,
)
from services.training.fit.dataset_reader import DatasetReader
from services.training.model.scoring import FlagCounts
from services.training.serving.cache import LoadedModel

# Rows per record batch: one batch's features and output held at a time (a few MB at
# 28 columns), large enough that LightGBM's per-call overhead does not show.
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ScoringResult:
    output: dataset_pb2.Dataset
    rows_scored: int
    flag_counts: FlagCounts


async def score_dataset(
    *,
    datasets: DatasetReader,
    writer: DatasetWriter,
    model: LoadedModel,
    dataset: dataset_pb2.Dataset,
    options: ScoringOptions,
    work_dir: Path,
    output_name: str,
    upload_request_id: str,
    upload_timeout: float,
    check: Callable[[], None] = lambda: None,
    on_rows: Callable[[int], None] = lambda rows: None,
    batch_rows: int = BATCH_ROWS,
) -> ScoringResult:
    """Score every row of a READY dataset and store the output as a new dataset.

    Raises TrainingFailure (the data or the request), TrainingStopped (from `check`)
    or DatasetUnavailable (DatasetService could not be reached).
    """
    check_columns(model.spec, options, dataset.dataset_id, [c.name for c in dataset.columns])
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    path = work_dir / f"scoring-{uuid.uuid4().hex}.parquet"
    scorers: list[BatchScorer] = []

    def on_schema(schema: pa.Schema) -> Callable[[pa.RecordBatch], None]:
        scorer = BatchScorer(
            model.booster, model.spec, options, schema, path, check=check, on_rows=on_rows
        )
        scorers.append(scorer)
        return scorer.add

    try:
        try:
            await datasets.stream(
                dataset.dataset_id,
                columns_to_read(model.spec, options),
                on_schema,
                batch_rows=batch_rows,
            )
        finally:
            for scorer in scorers:
                scorer.close()
        check()
        output = await writer.upload(path, output_name, upload_request_id, upload_timeout)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not scorers:
        return ScoringResult(output, 0, FlagCounts())
    return ScoringResult(output, scorers[0].rows, scorers[0].flag_counts)
