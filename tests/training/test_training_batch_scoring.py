"""Batch scoring inside the Trainer (`services/training/batch/`) against real parts: the
real DatasetService (in this process, local blobs + SQLite) holding the input and
receiving the output, a model trained by the real Trainer process from that dataset
and registered in the session's MLflow server (basic auth), loaded as Predict loads it.

The output dataset is read back through DatasetService and compared with what
`mlflow.pyfunc.load_model(...).predict` gives on the same CSV rows."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from devstack.components import MlflowServer, NatsServer
from modelyard.dataset.v1 import dataset_pb2
from runtime.channels import open_channel
from runtime.settings import CommonSettings
from services.training import reasons
from services.training.batch.job import ScoringResult, score_dataset
from services.training.batch.output import DatasetWriter
from services.training.batch.scorer import ScoringOptions
from services.training.fit.dataset_reader import DatasetReader
from services.training.fit.pipeline import TrainingStopped
from services.training.model import pyfunc_model
from services.training.model.targets import TrainingFailure
from services.training.serving.cache import LoadedModel, ModelCache
from tests.dataset.dataset_support import TOKEN, RunningService, start_in_process, stop_in_process
from tests.training.training_support import (
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
    messy_frame,
    start_trainer,
)

pytestmark = pytest.mark.slow

ROWS = 600


@pytest.fixture(scope="module")
async def datasets(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningService]:
    tmp = tmp_path_factory.mktemp("scoring-datasets")
    running = await start_in_process(tmp, None, database_url=f"sqlite:///{tmp / 'd.db'}")
    yield running
    await stop_in_process(running)


@pytest.fixture(scope="module")
def scoring_trainer(
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    datasets: RunningService,
    dataset_server: DatasetServer,
) -> Any:
    work_dir = tmp_path_factory.mktemp("scoring-trainer")
    process = start_trainer(
        work_dir,
        nats_server,
        mlflow_server,
        datasets.settings.listen_address,
        name="scoring-trainer",
        MODELYARD_SERVICE_TOKEN=TOKEN,
        # The stand-in JobsService that knows the jobs Bus.submit made.
        MODELYARD_TRAINER_JOBS_SERVICE_ADDRESS=dataset_server.address,
    )
    yield process
    process.stop()


class Parts:
    def __init__(self, datasets: RunningService, csv: Path, source: dataset_pb2.Dataset) -> None:
        channel = open_channel(
            datasets.settings.listen_address, CommonSettings(MODELYARD_SERVICE_TOKEN=TOKEN)
        )
        self.channel = channel
        self.reader = DatasetReader(channel, 30.0)
        self.writer = DatasetWriter(channel)
        self.client = datasets.client
        self.csv = csv
        self.source = source
        self.model: LoadedModel | None = None

    async def score(
        self,
        dataset: dataset_pb2.Dataset | None = None,
        options: ScoringOptions | None = None,
        *,
        request_id: str,
        work_dir: Path,
        **kwargs: Any,
    ) -> ScoringResult:
        assert self.model is not None
        return await score_dataset(
            datasets=self.reader,
            writer=self.writer,
            model=self.model,
            dataset=dataset or self.source,
            options=options or ScoringOptions(),
            work_dir=work_dir,
            output_name=f"scored-{request_id}",
            upload_request_id=request_id,
            upload_timeout=120.0,
            **kwargs,
        )


@pytest.fixture(scope="module")
async def parts(
    tmp_path_factory: pytest.TempPathFactory,
    datasets: RunningService,
    scoring_trainer: TrainerProcess,
    bus: Bus,
    mlflow_client: Any,
) -> AsyncIterator[Parts]:
    """The messy table uploaded, a model of `label` trained on it and loaded."""
    csv = tmp_path_factory.mktemp("scoring-data") / "customers.csv"
    messy_frame(ROWS).to_csv(csv, index=False)
    source = await datasets.client.upload(csv, display_name="customers")
    job_id = await bus.submit(source.dataset_id, "label", model_name="batch-scoring-customers")
    final = final_event(await bus.wait_final(job_id, within=180))
    assert final.WhichOneof("kind") == "succeeded", final
    registered = final.succeeded.mlflow
    found = Parts(datasets, csv, source)
    found.model = await asyncio.to_thread(
        ModelCache(2).load,
        registered.registered_model_name,
        int(registered.registered_model_version),
    )
    yield found
    await found.channel.close()


def pyfunc_predictions(model: LoadedModel, csv: Path) -> pd.DataFrame:
    loaded = mlflow.pyfunc.load_model(f"models:/{model.name}/{model.version}")
    predicted: pd.DataFrame = loaded.predict(pd.read_csv(csv))
    return predicted


async def test_every_row_is_scored_into_a_new_dataset_as_the_pyfunc_model_scores_it(
    parts: Parts, tmp_path: Path
) -> None:
    progress: list[int] = []
    result = await parts.score(
        options=ScoringOptions(("customer_id", "color"), class_probabilities=True),
        request_id="scoring-all-rows",
        work_dir=tmp_path,
        batch_rows=100,
        on_rows=progress.append,
    )

    assert result.rows_scored == ROWS
    assert progress == list(range(100, ROWS + 1, 100))  # one report per record batch
    output = result.output
    assert output.state == dataset_pb2.Dataset.State.READY
    assert output.dataset_id != parts.source.dataset_id
    assert output.row_count == ROWS
    assert [c.name for c in output.columns] == [
        "customer_id",
        "color",
        "prediction",
        "probability_no",
        "probability_yes",
        "flags",
    ]
    table, _ = await parts.client.read(output.dataset_id)
    scored = table.to_pandas()
    assert parts.model is not None
    expected = await asyncio.to_thread(pyfunc_predictions, parts.model, parts.csv)
    source = pd.read_csv(parts.csv)
    assert scored["customer_id"].tolist() == source["customer_id"].tolist()
    assert scored["color"].tolist() == source["color"].tolist()
    assert scored["prediction"].tolist() == expected["prediction"].tolist()
    for column in ("probability_no", "probability_yes"):
        np.testing.assert_allclose(scored[column], expected[column], rtol=1e-12)
    assert os.listdir(tmp_path) == []  # the scratch file is gone once stored


async def test_probabilities_are_left_out_unless_asked(parts: Parts, tmp_path: Path) -> None:
    result = await parts.score(request_id="scoring-no-probabilities", work_dir=tmp_path)
    assert [c.name for c in result.output.columns] == ["prediction", "flags"]
    assert result.output.row_count == ROWS


async def test_a_repeated_attempt_stores_no_second_dataset(parts: Parts, tmp_path: Path) -> None:
    first = await parts.score(request_id="scoring-retried-job", work_dir=tmp_path)
    again = await parts.score(request_id="scoring-retried-job", work_dir=tmp_path)
    assert again.output.dataset_id == first.output.dataset_id


async def test_a_stop_ends_scoring_between_batches_and_stores_nothing(
    parts: Parts, tmp_path: Path
) -> None:
    before = len((await parts.client.list(page_size=1000)).datasets)
    batches = 0

    def check() -> None:
        nonlocal batches
        batches += 1
        if batches > 2:
            raise TrainingStopped("cancelled")

    with pytest.raises(TrainingStopped):
        await parts.score(
            request_id="scoring-stopped", work_dir=tmp_path, batch_rows=100, check=check
        )
    assert batches == 3  # two batches scored, the third refused, no further rows read
    assert len((await parts.client.list(page_size=1000)).datasets) == before
    assert os.listdir(tmp_path) == []


async def test_a_dataset_without_the_models_columns_is_refused_with_a_reason(
    parts: Parts, tmp_path: Path
) -> None:
    csv = tmp_path / "other.csv"
    pd.DataFrame({"color": ["red", "blue"] * 10, "weight": range(20)}).to_csv(csv, index=False)
    other = await parts.client.upload(csv, display_name="other")

    with pytest.raises(TrainingFailure) as failure:
        await parts.score(other, request_id="scoring-missing", work_dir=tmp_path / "w")
    assert failure.value.reason == reasons.PREDICT_COLUMNS_MISSING
    assert failure.value.metadata["column"] == "size,count,signup,flag"


async def test_pass_through_columns_must_exist_and_not_clash(parts: Parts, tmp_path: Path) -> None:
    with pytest.raises(TrainingFailure) as unknown:
        await parts.score(
            options=ScoringOptions(("customer_id", "no_such_column")),
            request_id="scoring-unknown-column",
            work_dir=tmp_path,
        )
    assert unknown.value.reason == reasons.SCORING_COLUMN_NOT_FOUND
    assert unknown.value.metadata["column"] == "no_such_column"
    assert unknown.value.code == "INVALID_ARGUMENT"

    with pytest.raises(TrainingFailure) as clash:
        await parts.score(
            options=ScoringOptions(("prediction",)),
            request_id="scoring-clashing-column",
            work_dir=tmp_path,
        )
    assert clash.value.reason == reasons.SCORING_COLUMN_CONFLICT
    assert clash.value.metadata["column"] == "prediction"


async def test_a_value_the_model_cannot_read_names_its_row_in_the_dataset(
    parts: Parts, tmp_path: Path
) -> None:
    frame = messy_frame(ROWS)
    sizes = frame["size"].astype("object")
    sizes[250] = "big"
    frame["size"] = sizes
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False)
    bad = await parts.client.upload(csv, display_name="customers-bad")

    with pytest.raises(TrainingFailure) as failure:
        await parts.score(
            bad, request_id="scoring-bad-value", work_dir=tmp_path / "w", batch_rows=100
        )
    assert failure.value.reason == reasons.PREDICT_VALUE_INVALID
    assert failure.value.metadata == {"column": "size", "rows": "250"}


async def test_rows_unlike_the_training_data_are_flagged_and_counted(
    parts: Parts, tmp_path: Path
) -> None:
    frame = messy_frame(ROWS)
    frame.loc[10, "color"] = "purple"  # never seen in training
    frame.loc[20, "size"] = 1e6  # far above the training range
    for column in ("color", "size", "count", "signup", "flag"):
        frame[column] = frame[column].astype("object")
        frame.loc[30, column] = None  # every feature missing
    csv = tmp_path / "unlike.csv"
    frame.to_csv(csv, index=False)
    unlike = await parts.client.upload(csv, display_name="customers-unlike")

    result = await parts.score(unlike, request_id="scoring-flags", work_dir=tmp_path / "w")

    table, _ = await parts.client.read(result.output.dataset_id)
    flags = table.column("flags").to_pylist()
    assert flags[10] == "unseen_category:color"
    assert flags[20] == "out_of_range:size"
    assert flags[30] == "all_missing"
    assert result.flag_counts.unseen_category_rows == 1
    assert result.flag_counts.out_of_range_rows == 1
    assert result.flag_counts.all_missing_rows == 1
    assert result.flag_counts.flagged_rows == sum(1 for text in flags if text) == 3


async def test_explain_adds_contributions_that_sum_to_the_score(
    parts: Parts, tmp_path: Path
) -> None:
    result = await parts.score(
        options=ScoringOptions(class_probabilities=True, explain=True),
        request_id="scoring-explained",
        work_dir=tmp_path,
        batch_rows=250,
    )

    table, _ = await parts.client.read(result.output.dataset_id)
    scored = table.to_pandas()
    assert parts.model is not None
    features = [name for name in scored.columns if name.startswith("contribution_")]
    model_columns = pyfunc_model.feature_names(parts.model.spec)
    assert features == [f"contribution_{name}" for name in model_columns]
    assert "contribution_signup__year" in features  # a date is several model columns
    raw = scored[features].sum(axis=1) + scored["base_value"]
    probability_yes = 1.0 / (1.0 + np.exp(-raw))  # binary: the raw score is log-odds
    np.testing.assert_allclose(probability_yes, scored["probability_yes"], rtol=1e-9)
