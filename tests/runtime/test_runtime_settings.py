"""Settings (`runtime/settings.py`): the shared configuration and the mixins give each
service the same fields under its own prefix, and the shared variables one name."""

from __future__ import annotations

import pydantic
import pytest

from gateway.settings import GatewaySettings
from runtime.settings import CommonSettings
from services.dataset.settings import DatasetSettings
from services.jobs.settings import JobsSettings
from services.training.settings import TrainerSettings

SERVICES = [DatasetSettings, JobsSettings, TrainerSettings, GatewaySettings]


@pytest.mark.parametrize(
    ("settings", "variable", "field"),
    [
        (JobsSettings, "MODELYARD_JOBS_NATS_URL", "nats_url"),
        (TrainerSettings, "MODELYARD_TRAINER_NATS_URL", "nats_url"),
        (
            TrainerSettings,
            "MODELYARD_TRAINER_NATS_CONNECT_TIMEOUT_SECONDS",
            "nats_connect_timeout_seconds",
        ),
        (JobsSettings, "MODELYARD_JOBS_DATASET_SERVICE_ADDRESS", "dataset_service_address"),
        (GatewaySettings, "MODELYARD_GATEWAY_TRAINER_SERVICE_ADDRESS", "trainer_service_address"),
        (DatasetSettings, "MODELYARD_DATASET_LISTEN_ADDRESS", "listen_address"),
        (TrainerSettings, "MODELYARD_TRAINER_METRICS_ADDRESS", "metrics_address"),
    ],
)
def test_a_mixin_field_is_read_under_the_service_prefix(
    monkeypatch: pytest.MonkeyPatch,
    settings: type[CommonSettings],
    variable: str,
    field: str,
) -> None:
    value = "42" if field.endswith("seconds") else "example:1234"
    monkeypatch.setenv(variable, value)
    assert str(getattr(settings(), field)) in (value, "42.0")


def test_each_service_has_its_own_default_listen_address() -> None:
    addresses = {s().listen_address for s in (DatasetSettings, JobsSettings, TrainerSettings)}
    assert len(addresses) == 3


@pytest.mark.parametrize("settings", SERVICES)
def test_every_settings_object_is_frozen_and_ignores_unknown_variables(
    monkeypatch: pytest.MonkeyPatch, settings: type[CommonSettings]
) -> None:
    monkeypatch.setenv("MODELYARD_NOT_A_SETTING", "1")
    loaded = settings()
    with pytest.raises(pydantic.ValidationError):
        loaded.log_level = "DEBUG"  # type: ignore[misc]  # what the test is about


def test_shared_variables_have_one_name_in_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_LOG_LEVEL", "DEBUG")
    assert {s().log_level for s in SERVICES} == {"DEBUG"}


def test_a_service_token_list_is_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = CommonSettings(service_token=" new , old ,")
    assert settings.resolved_service_tokens() == ["new", "old"]
    assert settings.resolved_service_token() == "new"
