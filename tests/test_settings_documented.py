"""Each process documents its settings: every field's environment variable is in
its README, so the README stays true when a setting is added or renamed."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from runtime.settings import CommonSettings

REPO_ROOT = Path(__file__).resolve().parent.parent

PROCESSES = [
    ("services/dataset", "services.dataset.settings", "DatasetSettings"),
    ("services/jobs", "services.jobs.settings", "JobsSettings"),
    ("services/training", "services.training.settings", "TrainerSettings"),
    ("gateway", "gateway.settings", "GatewaySettings"),
]


def environment_names(settings: type[BaseSettings]) -> list[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = []
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.mark.parametrize(("folder", "module", "class_name"), PROCESSES)
def test_every_setting_is_documented(folder: str, module: str, class_name: str) -> None:
    settings = getattr(importlib.import_module(module), class_name)
    readme = (REPO_ROOT / folder / "README.md").read_text()
    # Settings every process shares are documented once, in runtime/README.md.
    shared = set(environment_names(CommonSettings))
    undocumented = [
        name for name in environment_names(settings) if name not in shared and name not in readme
    ]
    assert undocumented == []


def test_shared_settings_are_documented() -> None:
    readme = (REPO_ROOT / "runtime" / "README.md").read_text()
    assert [name for name in environment_names(CommonSettings) if name not in readme] == []


@pytest.mark.parametrize(("folder", "module", "class_name"), PROCESSES)
def test_every_setting_has_an_embedded_default(folder: str, module: str, class_name: str) -> None:
    settings = getattr(importlib.import_module(module), class_name)
    required = [name for name, field in settings.model_fields.items() if field.is_required()]
    assert required == []
