"""The `modelyard` command line, and its client library, against one live stack
shared by the CLI tests: the console script installed in .venv runs as a real
subprocess (see `cli_support.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from devstack.stack import Stack, StackOptions
from modelyard_client import Client
from tests.cli.cli_support import Cli


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """nats-server, MLflow with basic auth, the three services and the gateway with a
    bearer token; SQLite and local blobs (the embedded defaults) keep it quick. The
    gateway trusts a checked project token for 2 s (30 s by default), so that a revoke
    shows without waiting half a minute."""
    options = StackOptions(
        work_dir=tmp_path_factory.mktemp("cli-stack"),
        extra_env={"gateway": {"MODELYARD_GATEWAY_API_TOKEN_CACHE_SECONDS": "2"}},
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="session")
def cli(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(stack.gateway_url, stack.api_token, tmp_path_factory.mktemp("cli-cwd"))


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.gateway_url, stack.api_token) as api:
        yield api


@pytest.fixture(scope="session")
def csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated tables:
    - `churn.csv`: 300 rows, a binary string target `churned`, an id column, a
      numeric column with missing values, a categorical one, a constant one;
    - `slow.csv`: 4,000 rows of 8 numeric features, a binary target `y`, to train
      for seconds with many iterations and a tiny learning rate;
    - `big.csv`: 60,000 rows (2.7 MB), to upload over several chunks."""
    directory = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(7)
    n = 300
    churn = pd.DataFrame(
        {
            "customer_id": range(1000, 1000 + n),
            "tenure": rng.integers(1, 72, size=n),
            "monthly_fee": rng.normal(50, 15, size=n).round(2),
            "plan": rng.choice(["basic", "plus", "pro"], size=n),
            "region": "north",
        }
    )
    churn.loc[rng.choice(n, 15, replace=False), "monthly_fee"] = np.nan
    signal = -0.05 * churn["tenure"] + (churn["plan"] == "basic") + rng.normal(0, 0.7, n)
    churn["churned"] = np.where(signal > -1.0, "yes", "no")
    churn.to_csv(directory / "churn.csv", index=False)
    churn.drop(columns=["churned"]).head(25).to_csv(directory / "churn_new.csv", index=False)

    features = rng.normal(size=(4000, 8))
    slow = pd.DataFrame(features, columns=[f"x{i}" for i in range(8)])
    slow["y"] = np.where(features[:, 0] + features[:, 1] * features[:, 2] > 0, "pos", "neg")
    slow.to_csv(directory / "slow.csv", index=False)

    m = 60_000
    big = pd.DataFrame(
        {
            "a": rng.normal(size=m),
            "b": rng.normal(size=m),
            "c": rng.choice(["u", "v"], size=m),
            "d": rng.integers(0, 1000, size=m),
        }
    )
    big.to_csv(directory / "big.csv", index=False)
    return directory


@pytest.fixture(scope="session")
def churn_dataset(stack: Stack, csv_dir: Path) -> dict[str, Any]:
    with Client(stack.gateway_url, stack.api_token) as api:
        return api.upload_dataset(csv_dir / "churn.csv", "churn")


@pytest.fixture(scope="session")
def slow_dataset(stack: Stack, csv_dir: Path) -> dict[str, Any]:
    with Client(stack.gateway_url, stack.api_token) as api:
        return api.upload_dataset(csv_dir / "slow.csv", "slow")


@pytest.fixture(scope="session")
def churn_model(stack: Stack, churn_dataset: dict[str, Any]) -> dict[str, Any]:
    """A registered model `cli-churn`, version 1 the champion: the job that made it."""
    with Client(stack.gateway_url, stack.api_token) as api:
        job = api.create_training_job(
            churn_dataset["datasetId"], "churned", registered_model_name="cli-churn"
        )
        job = api.wait_for_training_job(job["jobId"], timeout=180)
    assert job["state"] == "SUCCEEDED", job
    return job
