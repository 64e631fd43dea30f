"""deploy/k8s as data: every object valid against the Kubernetes schemas (strict: a
misspelt field fails), selectors, ports and probes that agree, Secrets only from the
secretGenerator, and the Trainer split in an API Deployment and KEDA-scaled workers
whose grace period lets a job finish or be handed back."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from runtime import nats_access
from runtime.messaging import TRAINERS_CONSUMER, TRAINING_REQUESTS_STREAM
from services.training.settings import TrainerSettings
from tests.deploy.deploy_support import (
    DOCKERFILE,
    K8S_DIR,
    REPO_ROOT,
    Process,
    containers,
    k8s_objects_of,
    listen_address,
    load_k8s_objects,
    load_kustomization,
    load_settings,
    parse_address,
    pods_selected,
    secret_generator_files,
    selects,
    shutdown_grace,
    trainer_stop_budget,
)

# The oldest Kubernetes the manifests are checked against (gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30.0"
BUILT_IN_KINDS = {
    "Namespace",
    "ConfigMap",
    "Deployment",
    "Job",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
}

KEDA_SCALED_OBJECT_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
KEDA_JETSTREAM_METADATA = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return load_k8s_objects()


def deployments() -> dict[str, dict[str, Any]]:
    """The Deployments of modelyard's processes (the Dask ones are checked apart)."""
    return {
        name: deployment
        for name, deployment in k8s_objects_of("Deployment").items()
        if name not in dask_deployments()
    }


def dask_deployments() -> dict[str, dict[str, Any]]:
    return {
        name: deployment
        for name, deployment in k8s_objects_of("Deployment").items()
        if containers(deployment)[0]["args"][0] == "dask"
    }


def process_of(k8s_procs: list[Process], deployment: str) -> Process:
    return next(process for process in k8s_procs if process.name == deployment)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_kustomization()["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_built_in_objects_are_valid_against_the_kubernetes_schemas(
    objects: list[dict[str, Any]],
) -> None:
    kinds = {o["kind"] for o in objects}
    assert kinds == BUILT_IN_KINDS | {"ScaledObject"}
    for document in objects:
        if document["kind"] in BUILT_IN_KINDS:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_no_secret_values_in_the_manifests(objects: list[dict[str, Any]]) -> None:
    """Secrets come only from the secretGenerator's files, which git ignores."""
    assert not [o for o in objects if o["kind"] == "Secret"]
    for (name, key), path in secret_generator_files().items():
        assert path.parent == K8S_DIR / "secrets", (name, key)
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT, check=False
        )
        assert ignored.returncode == 0, f"{path} would be committed"


def test_secret_references_exist(k8s_procs: list[Process]) -> None:
    generated = {f"{name}/{key}" for name, key in secret_generator_files()}
    referenced = {ref for process in k8s_procs for ref in process.secret_env.values()}
    referenced |= {
        f"{variable['valueFrom']['secretKeyRef']['name']}/{variable['valueFrom']['secretKeyRef']['key']}"
        for job in k8s_objects_of("Job").values()
        for container in containers(job)
        for variable in container.get("env", [])
        if "valueFrom" in variable
    }
    # The NATS server outside these manifests reads every user's password from this Secret.
    referenced |= {f"modelyard-nats-users/{key}" for key in NATS_SERVER_KEYS}
    assert referenced <= generated
    assert generated <= referenced, "a generated secret nobody uses"


NATS_SERVER_KEYS = ("admin-password", "jobs-password", "trainer-password")


def test_nats_users_log_in_with_their_own_password(k8s_procs: list[Process]) -> None:
    jobs = process_of(k8s_procs, "jobs")
    worker = process_of(k8s_procs, "trainer-worker")
    assert jobs.env["MODELYARD_JOBS_NATS_USER"] == nats_access.JOBS
    assert jobs.secret_env["MODELYARD_JOBS_NATS_PASSWORD"] == "modelyard-nats-users/jobs-password"
    assert worker.env["MODELYARD_TRAINER_NATS_USER"] == nats_access.TRAINER
    assert (
        worker.secret_env["MODELYARD_TRAINER_NATS_PASSWORD"]
        == "modelyard-nats-users/trainer-password"
    )
    # The Trainer API replicas take no work from NATS: no NATS password reaches them.
    assert "MODELYARD_TRAINER_NATS_PASSWORD" not in process_of(k8s_procs, "trainer-api").secret_env
    (setup,) = containers(k8s_objects_of("Job")["nats-setup"])
    env = {variable["name"]: variable for variable in setup["env"]}
    assert env["MODELYARD_NATS_SETUP_USER"]["value"] == nats_access.ADMIN
    assert env["MODELYARD_NATS_SETUP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "modelyard-nats-users",
        "key": "admin-password",
    }


def test_generated_secret_files_exist(secrets_dir: Path) -> None:
    for path in secret_generator_files().values():
        assert (secrets_dir / path.name).is_file(), path.name


def test_config_maps_referenced_exist() -> None:
    config_maps = k8s_objects_of("ConfigMap")
    for name, deployment in deployments().items():
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, name


def test_deployment_selectors_match_their_pods() -> None:
    for name, deployment in deployments().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selects(selector, deployment["spec"]["template"]["metadata"]["labels"]), name
        others = [d for d in pods_selected(selector) if d["metadata"]["name"] != name]
        assert not others, f"{name}'s selector also matches {others}"


def test_services_select_pods_and_reach_a_named_container_port() -> None:
    for name, service in k8s_objects_of("Service").items():
        selected = pods_selected(service["spec"]["selector"])
        assert selected, f"Service {name} selects no pods"
        for deployment in selected:
            ports = {
                port["name"]: port["containerPort"]
                for container in containers(deployment)
                for port in container.get("ports", [])
            }
            for service_port in service["spec"]["ports"]:
                target = service_port["targetPort"]
                assert target in ports or target in ports.values(), (name, target)


def test_pod_disruption_budgets_select_a_deployment() -> None:
    for name, budget in k8s_objects_of("PodDisruptionBudget").items():
        assert len(pods_selected(budget["spec"]["selector"]["matchLabels"])) == 1, name


def test_every_container_has_readiness_and_liveness_probes_on_its_port(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, deployment in deployments().items():
        process = process_of(k8s_procs, name)
        settings = load_settings(process, monkeypatch)
        for container in containers(deployment):
            named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                assert probe, f"{name} has no {probe_name}"
                listen = listen_address(settings)
                assert listen.port in named_ports.values(), name
                if process.module == "gateway":
                    port = probe["httpGet"]["port"]
                    assert named_ports.get(port, port) == listen.port, name
                else:
                    # The gRPC health service of runtime.server.GrpcServer.
                    assert probe["grpc"]["port"] == listen.port, (name, probe_name)


def test_gateway_joins_only_once_its_backends_answer() -> None:
    container = containers(deployments()["gateway"])[0]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def prestop_seconds(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0.0
    assert command[0] == "sleep", command
    return float(command[1])


def test_grace_periods_cover_a_graceful_stop(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, deployment in deployments().items():
        process = process_of(k8s_procs, name)
        grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        pre_stop = max(prestop_seconds(c) for c in containers(deployment))
        if process.module == "services.training":
            needed = trainer_stop_budget(process, monkeypatch)
        else:
            needed = shutdown_grace(process, monkeypatch) + 5
        assert grace >= pre_stop + needed, f"{name}: {grace} s < {pre_stop + needed} s"


def test_trainer_is_split_into_an_api_and_scaled_workers(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = {}
    for process in k8s_procs:
        if process.module == "services.training":
            settings = load_settings(process, monkeypatch)
            assert isinstance(settings, TrainerSettings)
            slots[process.name] = settings.worker_slots
    assert slots["trainer-api"] == 0
    assert slots["trainer-worker"] >= 1
    assert deployments()["trainer-api"]["spec"]["replicas"] >= 1
    # The autoscaler owns the workers' count: `kubectl apply` must not reset it.
    assert "replicas" not in deployments()["trainer-worker"]["spec"]


def test_the_trainer_service_reaches_api_replicas_only(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs and the gateway call TrainerService; workers busy training stay out of it."""
    service = k8s_objects_of("Service")["trainer"]
    selected = [d["metadata"]["name"] for d in pods_selected(service["spec"]["selector"])]
    for name in selected:
        settings = load_settings(process_of(k8s_procs, name), monkeypatch)
        assert isinstance(settings, TrainerSettings)
        assert settings.worker_slots == 0, name


def test_keda_scales_the_workers_on_the_trainers_consumer(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    scaled = k8s_objects_of("ScaledObject")
    assert list(scaled) == ["trainer-worker"]
    spec = scaled["trainer-worker"]["spec"]
    # No schema for KEDA's objects here: at least no misspelt field (KEDA's documented ones).
    assert set(spec) <= KEDA_SCALED_OBJECT_FIELDS
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] in deployments()
    worker = load_settings(process_of(k8s_procs, target["name"]), monkeypatch)
    assert isinstance(worker, TrainerSettings)
    assert worker.worker_slots >= 1
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_JETSTREAM_METADATA
    assert metadata["stream"] == TRAINING_REQUESTS_STREAM
    assert metadata["consumer"] == TRAINERS_CONSUMER
    # Pending + unacknowledged messages per replica: one for each of its slots.
    assert int(metadata["lagThreshold"]) == worker.worker_slots
    # KEDA's operator runs in its own namespace: the NATS the workers use, fully qualified.
    nats = parse_address(worker.nats_url)
    monitoring = parse_address(metadata["natsServerMonitoringEndpoint"])
    namespace = load_kustomization()["namespace"]
    assert monitoring.host == f"{nats.host}.{namespace}.svc.cluster.local"
    assert monitoring.port == 8222


def test_trainer_threads_match_the_cpu_limit(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LightGBM would otherwise start one thread per CPU of the node."""
    settings = load_settings(process_of(k8s_procs, "trainer-worker"), monkeypatch)
    assert isinstance(settings, TrainerSettings)
    (container,) = containers(deployments()["trainer-worker"])
    cpu_limit = float(str(container["resources"]["limits"]["cpu"]).removesuffix("m"))
    assert settings.num_threads * settings.worker_slots == cpu_limit


def test_pods_run_unprivileged_with_writable_state_only(
    k8s_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    image_env = dockerfile_env()
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        process = process_of(k8s_procs, name)
        in_image = {"MODELYARD_STATE_DIR": image_env["MODELYARD_STATE_DIR"]}
        settings = load_settings(replace(process, env=in_image | process.env), monkeypatch)
        for container in containers(deployment):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
            writable = [settings.state_dir, Path("/tmp")]
            if isinstance(settings, TrainerSettings):
                writable.append(settings.resolved_work_dir())
            for path in writable:
                assert any(path.is_relative_to(m) for m in mounts), f"{name}: {path} read-only"


def test_every_container_runs_the_image_kustomize_sets() -> None:
    (image,) = load_kustomization()["images"]
    for name, deployment in deployments().items():
        for container in containers(deployment):
            assert container["image"].split(":")[0] == image["name"], name
            # args, not command: the image's entrypoint stays in place.
            assert "command" not in container, name


def dockerfile_env() -> dict[str, str]:
    """ENV of the Dockerfile's final stage (`ENV A=1 \\ B=2` form)."""
    final = DOCKERFILE.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in line.removeprefix("ENV ").split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dask_scheduler_and_autoscaled_workers_hold_no_secret() -> None:
    dask = dask_deployments()
    assert set(dask) == {"dask-scheduler", "dask-worker"}
    assert dask["dask-scheduler"]["spec"]["replicas"] == 1
    # The autoscaler owns the workers' count: `kubectl apply` must not reset it.
    assert "replicas" not in dask["dask-worker"]["spec"]
    (autoscaler,) = k8s_objects_of("HorizontalPodAutoscaler").values()
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "dask-worker"
    assert 2 <= autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]
    (image,) = load_kustomization()["images"]
    for name, deployment in dask.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(deployment):
            # No secret, no service token, no configuration map: URLs come with the tasks.
            assert "env" not in container, name
            assert "envFrom" not in container, name
            assert container["image"].split(":")[0] == image["name"], name
            assert "command" not in container, name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]], name
            args = container["args"]
            flag = "--port" if args[1] == "scheduler" else "--worker-port"
            port = int(args[args.index(flag) + 1])
            assert port in [p["containerPort"] for p in container["ports"]], name
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["tcpSocket"]["port"] == port, (name, probe)


def test_the_trainer_reaches_the_dask_scheduler_service() -> None:
    config = k8s_objects_of("ConfigMap")["modelyard-trainer"]["data"]
    address = parse_address(config["MODELYARD_TRAINER_DASK_SCHEDULER_ADDRESS"])
    service = k8s_objects_of("Service")[address.host]
    assert address.port in [port["port"] for port in service["spec"]["ports"]]
    (selected,) = pods_selected(service["spec"]["selector"])
    assert selected["metadata"]["name"] == "dask-scheduler"
    worker_args = containers(dask_deployments()["dask-worker"])[0]["args"]
    assert worker_args[2] == f"tcp://{address.host}:{address.port}"


def test_the_trainers_log_in_to_mlflow_as_the_user_the_setup_job_makes(
    k8s_procs: list[Process],
) -> None:
    (setup,) = containers(k8s_objects_of("Job")["mlflow-setup"])
    assert setup["args"] == ["python", "-m", "runtime.mlflow_setup"]
    env = {variable["name"]: variable for variable in setup["env"]}
    trainer_user = env["MODELYARD_MLFLOW_SETUP_TRAINER_USERNAME"]["value"]
    admin_secret = env["MODELYARD_MLFLOW_SETUP_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    trainer_secret = env["MODELYARD_MLFLOW_SETUP_TRAINER_PASSWORD"]["valueFrom"]["secretKeyRef"]
    generated = secret_generator_files()
    assert generated[(admin_secret["name"], admin_secret["key"])].name == "mlflow_admin_password"
    trainer_file = generated[(trainer_secret["name"], trainer_secret["key"])].name
    assert trainer_file == "mlflow_trainer_password"
    for name in ("trainer-worker", "trainer-api"):
        process = process_of(k8s_procs, name)
        assert process.env["MODELYARD_TRAINER_MLFLOW_USERNAME"] == trainer_user != "admin"
        assert (
            process.env["MODELYARD_TRAINER_MLFLOW_TRACKING_URI"]
            == (env["MODELYARD_MLFLOW_SETUP_TRACKING_URI"]["value"])
        )
        secret_name, key = process.secret_env["MODELYARD_TRAINER_MLFLOW_PASSWORD"].split("/")
        assert generated[(secret_name, key)].name == trainer_file
