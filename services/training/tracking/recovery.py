"""A redelivered job whose earlier attempt got as far as registering its model.

On attempts after the first, the Trainer looks for a version tagged with the
job id before training. When there is one, it reports that version (from the
run's `modelyard.job_result`, the `succeeded` event the attempt would have
published) and settles `champion` again, so a job never ends with two versions;
when there is none, runs that earlier attempts left RUNNING are marked KILLED
and the job is trained.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from services.training.model.targets import PRIMARY_METRICS, Task
from services.training.tracking.calls import MlflowCalls, MlflowTimings
from services.training.tracking.champion import version_metrics
from services.training.tracking.records import JobInfo, RecoveredJob, RunRef
from services.training.tracking.registry import Registry

JOB_RESULT_TAG = "modelyard.job_result"
JOB_RESULT_ARTIFACT = "job_result.json"


class Recovery:
    def __init__(
        self, mlflow: MlflowCalls, registry: Registry, ui_url: str, work_dir: Path
    ) -> None:
        self._mlflow = mlflow
        self._client = mlflow.client
        self._registry = registry
        self._ui_url = ui_url
        self._work_dir = work_dir

    def recover_job(
        self, job: JobInfo, experiment_id: Callable[[], str], timings: MlflowTimings
    ) -> RecoveredJob | None:
        """The model an earlier attempt of `job` registered, with `champion` settled again."""
        with self._mlflow.step(timings, "find_job_version"):
            version = self._registry.find_job_version(job.model_name, job.job_id)
        if version is None or not version.run_id:
            self._close_abandoned_runs(job, experiment_id, timings)
            return None
        with (
            self._mlflow.step(timings, "recover_job_result"),
            tempfile.TemporaryDirectory(dir=self._ensure_work_dir()) as scratch,
        ):
            run = self._client.get_run(version.run_id)
            job_result = run.data.tags.get(JOB_RESULT_TAG)
            if job_result is None:
                path = self._client.download_artifacts(version.run_id, JOB_RESULT_ARTIFACT, scratch)
                job_result = Path(path).read_text()
            if run.info.status == "RUNNING":
                self._client.set_terminated(version.run_id, "FINISHED")
        task = Task((version.tags or {}).get("task", Task.REGRESSION.value))
        with self._registry.holding_champion(job.model_name):
            with self._mlflow.step(timings, "read_champion"):
                champion = self._registry.champion_version(job.model_name)
            published = self._registry.settle_champion(
                job.model_name,
                version,
                version_metrics(version),
                PRIMARY_METRICS[task],
                champion,
                timings,
            )
        run_ref = RunRef.of(
            self._ui_url,
            str(run.info.experiment_id),
            version.run_id,
            run.info.artifact_uri,
            version.model_id or "",
        )
        return RecoveredJob(run=run_ref, published=published, job_result=job_result)

    def _close_abandoned_runs(
        self, job: JobInfo, experiment_id: Callable[[], str], timings: MlflowTimings
    ) -> None:
        """Runs of earlier attempts left RUNNING by a Trainer that died: KILLED."""
        with self._mlflow.step(timings, "close_abandoned_runs"):
            abandoned = self._client.search_runs(
                [experiment_id()],
                f"tags.`modelyard.job_id` = '{job.job_id}' and attributes.status = 'RUNNING'",
            )
            for run in abandoned:
                self._client.set_tag(
                    run.info.run_id, "modelyard.outcome", "abandoned: its Trainer stopped"
                )
                self._client.set_terminated(run.info.run_id, "KILLED")

    def _ensure_work_dir(self) -> Path:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir
