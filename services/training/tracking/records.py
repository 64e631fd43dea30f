"""What the tracking code hands back and forth: the job as MLflow records it, the
run it opened, and the model version it registered. Built in one place each, so
that a job trained now and a job recovered from an earlier attempt are reported
the same way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobInfo:
    """What MLflow records about a job and its dataset."""

    job_id: str
    attempt: int
    dataset_id: str
    dataset_name: str
    dataset_sha256: str
    dataset_rows: int
    target_column: str
    requested_task: str
    # The MLflow registered model name (tracking/projects.py: per project).
    model_name: str
    # The version of the named dataset (its display name) trained on; 0 when unknown.
    dataset_version: int = 0
    # The job's project: its runs go to that project's experiment.
    project: str = "default"


@dataclass(frozen=True)
class RunRef:
    experiment_id: str
    run_id: str
    run_url: str
    artifact_uri: str
    model_id: str
    model_artifact_location: str

    @classmethod
    def of(
        cls,
        ui_url: str,
        experiment_id: str,
        run_id: str,
        artifact_uri: str,
        model_id: str,
        model_artifact_location: str = "",
    ) -> RunRef:
        return cls(
            experiment_id=experiment_id,
            run_id=run_id,
            run_url=run_url(ui_url, experiment_id, run_id),
            artifact_uri=artifact_uri,
            model_id=model_id,
            model_artifact_location=model_artifact_location,
        )


@dataclass(frozen=True)
class PublishedModel:
    model_name: str
    version: int
    model_uri: str
    promoted_to_champion: bool
    champion_note: str

    @classmethod
    def of(cls, model_name: str, version: int, promoted: bool, note: str) -> PublishedModel:
        return cls(
            model_name=model_name,
            version=version,
            model_uri=f"models:/{model_name}/{version}",
            promoted_to_champion=promoted,
            champion_note=note,
        )


@dataclass(frozen=True)
class RecoveredJob:
    """What an earlier attempt of a job registered before its Trainer stopped."""

    run: RunRef
    published: PublishedModel
    # The Succeeded event it would have published (JSON), without its MLflow part.
    job_result: str


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
