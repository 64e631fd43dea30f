"""The suite's own helpers: what one test sets up must not reach the next."""

from __future__ import annotations

import os

import mlflow
import mlflow.tracking.fluent as fluent
import pytest

from tests.suite_support import MLFLOW_CLIENT_VARIABLES, mlflow_client_of


def test_mlflow_client_of_points_the_client_and_the_fluent_api_at_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in MLFLOW_CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with mlflow_client_of("http://127.0.0.1:1", "someone", "secret") as client:
        assert client.tracking_uri == "http://127.0.0.1:1"
        assert client._registry_uri == "http://127.0.0.1:1"
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:1"
        assert mlflow.get_registry_uri() == "http://127.0.0.1:1"
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "someone"


def test_mlflow_client_of_leaves_no_uri_experiment_nor_credentials_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in MLFLOW_CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "the-one-before")
    tracking_before, registry_before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    experiment_before = fluent._active_experiment_id

    def a_test_failing_after_set_experiment() -> None:
        with mlflow_client_of("http://127.0.0.1:1", "someone", "secret"):
            # What set_experiment leaves behind, without a server to create it on.
            fluent._active_experiment_id = "7"  # type: ignore[assignment]
            os.environ["MLFLOW_EXPERIMENT_ID"] = "7"
            raise RuntimeError("test failed inside")

    with pytest.raises(RuntimeError, match="test failed inside"):
        a_test_failing_after_set_experiment()

    assert mlflow.get_tracking_uri() == tracking_before
    assert mlflow.get_registry_uri() == registry_before
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "the-one-before"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert fluent._active_experiment_id == experiment_before
