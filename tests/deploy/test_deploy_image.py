"""The container image and the deployment's scripts.

Without a Docker engine the image cannot be built here, so the Dockerfile is checked as
text (stages, user, generated code, what the build context holds) and its pins against
pyproject.toml; the shell scripts it and compose run are executed for real, with stand-in
`mlflow`, `psql` and `mc` commands that record what they are asked to do.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.deploy_support import (
    DEPLOY,
    DOCKERFILE,
    GENERATE_SECRETS,
    REPO_ROOT,
    compose_secret_mounts,
    compose_secret_value,
    load_compose,
    secret_generator_files,
)

ENTRYPOINT = DEPLOY / "entrypoint.sh"
MLFLOW_SERVER = DEPLOY / "mlflow-server.sh"
POSTGRES_INIT = DEPLOY / "postgres" / "init-databases.sh"
MINIO_INIT = DEPLOY / "minio" / "init-buckets.sh"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
CONSTRAINTS = DEPLOY / "constraints.txt"


def run(
    command: list[str], env: Mapping[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def stub(directory: Path, name: str, script: str) -> None:
    """A stand-in command on PATH: records its arguments instead of doing the work."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nset -eu\n" + script)
    path.chmod(0o755)


# -- Dockerfile -------------------------------------------------------------------------------


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            match = re.fullmatch(r"FROM \S+ AS (\S+)", line)
            assert match, f"unnamed stage: {line}"
            current = found.setdefault(match.group(1), [])
        current.append(line)
    return found


def test_dockerfile_is_multi_stage_and_ends_in_the_runtime_stage() -> None:
    names = list(stages())
    assert len(names) >= 2
    assert names[-1] == "runtime"
    compose_targets = {
        s["build"]["target"] for s in load_compose()["services"].values() if "build" in s
    }
    assert compose_targets == {"runtime"}


def test_runtime_stage_runs_as_an_unprivileged_user() -> None:
    users = [line.split()[1] for line in stages()["runtime"] if line.startswith("USER ")]
    assert users, "the runtime stage runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric user lets Kubernetes check runAsNonRoot"
    assert int(uid) != 0


def test_contracts_are_generated_in_the_build_and_copied_into_the_runtime() -> None:
    generated_in = [
        name
        for name, lines in stages().items()
        if any(line.startswith("RUN ") and "devstack.protos" in line for line in lines)
    ]
    assert generated_in, "no stage runs the protobuf generation (make protos)"
    copies = [line for line in stages()["runtime"] if line.startswith("COPY --from=")]
    assert any(
        line.startswith(f"COPY --from={stage} ") and line.endswith(" ./modelyard")
        for line in copies
        for stage in generated_in
    )
    # The generators themselves stay out of the runtime image.
    assert not any("grpcio-tools" in line for line in stages()["runtime"])


def test_no_secret_is_baked_into_the_image() -> None:
    secret_word = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|DATABASE_URL", re.IGNORECASE)
    for lines in stages().values():
        for line in lines:
            if line.startswith(("ENV ", "ARG ", "LABEL ")):
                assert not secret_word.search(line), line
            if line.startswith(("COPY ", "ADD ")):
                assert "secrets" not in line, line


def context_sources() -> list[str]:
    """What the Dockerfile copies from the build context (the repository root)."""
    sources = []
    for lines in stages().values():
        for line in lines:
            parts = line.split()
            if parts[0] != "COPY" or any(p.startswith("--from=") for p in parts):
                continue
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def dockerignore_excludes(path: str) -> bool:
    """BuildKit's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parents = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in parents):
            excluded = not negated
    return excluded


def glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token.startswith("**"):
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def test_everything_the_dockerfile_copies_exists_and_is_in_the_context() -> None:
    sources = context_sources()
    assert "pyproject.toml" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not dockerignore_excludes(source.rstrip("/")), f"{source} is not in the context"


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    for path in (
        "deploy/secrets/service_token",
        "deploy/k8s/secrets/service_token",
        ".venv/bin/python",
        ".git/config",
        ".modelyard/service-token",
        "modelyard/descriptors.binpb",  # generated in the image, never copied from a checkout
        "services/jobs/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(path), path


def test_image_installs_the_openmp_runtime_lightgbm_links() -> None:
    import lightgbm

    library = next(Path(lightgbm.__file__).parent.rglob("lib_lightgbm.so"))
    linked = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True)
    assert "libgomp.so.1" in linked.stdout
    assert any("libgomp1" in line for line in stages()["runtime"] if line.startswith("RUN "))


def test_constraints_pin_every_dependency_within_pyproject_ranges() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for raw in pyproject["project"]["dependencies"]:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned: run deploy/lock.py"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {raw}"
    for image_only in ("psycopg2-binary", "grpcio-tools", "mypy-protobuf"):
        assert image_only in pins, image_only
    installs = [line for lines in stages().values() for line in lines if "pip install" in line]
    assert installs
    assert all("-c constraints.txt" in line for line in installs)


def test_image_entrypoint_is_the_secret_exporting_script() -> None:
    runtime = stages()["runtime"]
    assert 'ENTRYPOINT ["/usr/local/bin/modelyard-entrypoint"]' in runtime
    assert any(
        line.startswith("COPY ")
        and "deploy/entrypoint.sh /usr/local/bin/modelyard-entrypoint" in line
        for line in runtime
    )
    assert any("deploy/mlflow-server.sh /usr/local/bin/mlflow-server" in line for line in runtime)


# -- entrypoint.sh ----------------------------------------------------------------------------


def test_entrypoint_exports_secret_files_named_like_variables(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "MODELYARD_SERVICE_TOKEN").write_text("token-1\n")
    (secrets / "AWS_SECRET_ACCESS_KEY").write_text("a b$c'\"d")
    (secrets / "dataset_database_url").write_text("not a variable name")
    (secrets / "HAS-DASH").write_text("no")
    (secrets / "9STARTS_WITH_DIGIT").write_text("no")
    (secrets / "A_DIRECTORY").mkdir()
    script = 'printf "%s|%s|%s" "$MODELYARD_SERVICE_TOKEN" "$AWS_SECRET_ACCESS_KEY" "$(env)"'
    result = run(["sh", str(ENTRYPOINT), "sh", "-c", script], {"SECRETS_DIR": str(secrets)})
    token, key, environment = result.stdout.split("|", 2)
    assert token == "token-1"  # the file's trailing newline dropped
    assert key == "a b$c'\"d"  # taken literally, never evaluated
    names = {line.split("=", 1)[0] for line in environment.splitlines()}
    assert not names & {"dataset_database_url", "HAS-DASH", "9STARTS_WITH_DIGIT", "A_DIRECTORY"}


def test_entrypoint_runs_the_command_in_its_place(tmp_path: Path) -> None:
    result = run(
        ["sh", str(ENTRYPOINT), "sh", "-c", "exit 7"], {"SECRETS_DIR": str(tmp_path)}, check=False
    )
    assert result.returncode == 7
    nothing_mounted = run(["sh", str(ENTRYPOINT), "true"], {"SECRETS_DIR": "/nonexistent"})
    assert nothing_mounted.returncode == 0


# -- mlflow-server.sh -------------------------------------------------------------------------


@pytest.fixture
def mlflow_run(tmp_path: Path, secrets_dir: Path) -> dict[str, Any]:
    """The compose mlflow service's secrets and environment, ready to run its command."""
    compose = load_compose()
    service = compose["services"]["mlflow"]
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for target, source in compose_secret_mounts(service).items():
        (mounted / target).write_text(compose_secret_value(compose, source, secrets_dir))
    out = tmp_path / "out"
    out.mkdir()
    bin_dir = tmp_path / "bin"
    stub(
        bin_dir,
        "mlflow",
        'printf "%s\\n" "$@" > "$OUT/args"\n'
        'cp "$MLFLOW_AUTH_CONFIG_PATH" "$OUT/basic_auth.ini"\n'
        'stat -c %a "$MLFLOW_AUTH_CONFIG_PATH" > "$OUT/mode"\n'
        'env > "$OUT/env"\n',
    )
    env = {
        **service["environment"],
        "SECRETS_DIR": str(mounted),
        "OUT": str(out),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    return {"env": env, "secrets": mounted, "out": out}


def start_mlflow(
    mlflow_run: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = load_compose()["services"]["mlflow"]["command"]
    assert command == ["mlflow-server"]  # deploy/mlflow-server.sh, installed under that name
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", str(MLFLOW_SERVER)],
        env=mlflow_run["env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def read_auth_config_as_mlflow_does(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow.server.auth.config import read_auth_config

    with monkeypatch.context() as patch:
        patch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
        patch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
        patch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        return read_auth_config()


def test_mlflow_server_gets_its_database_and_admin_from_secrets(
    mlflow_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    start_mlflow(mlflow_run)
    out: Path = mlflow_run["out"]
    secrets: Path = mlflow_run["secrets"]
    config = read_auth_config_as_mlflow_does(out / "basic_auth.ini", monkeypatch)
    assert config.database_uri == (secrets / "MLFLOW_BACKEND_STORE_URI").read_text()
    assert config.admin_password == (secrets / "MLFLOW_AUTH_ADMIN_PASSWORD").read_text()
    assert config.admin_username == "admin"
    # A user sees only what it was granted or made: the Trainer's user nothing else.
    assert config.default_permission == "NO_PERMISSIONS"
    assert (out / "mode").read_text().strip() == "600"
    arguments = (out / "args").read_text().splitlines()
    assert arguments[:3] == ["server", "--app-name", "basic-auth"]
    assert arguments[arguments.index("--host") + 1] == "0.0.0.0"
    assert arguments[arguments.index("--port") + 1] == mlflow_run["env"]["MLFLOW_PORT"]
    for secret in secrets.iterdir():  # never on a command line, where `ps` shows it
        assert secret.read_text() not in (out / "args").read_text()
    environment = dict(
        line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line
    )
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert environment["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert (
        environment["MLFLOW_FLASK_SERVER_SECRET_KEY"]
        == (secrets / "MLFLOW_FLASK_SERVER_SECRET_KEY").read_text()
    )
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_mlflow_config_keeps_a_password_with_percent_signs(
    mlflow_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "100%-sure-%(admin)s-pw"
    (mlflow_run["secrets"] / "MLFLOW_AUTH_ADMIN_PASSWORD").write_text(password)
    start_mlflow(mlflow_run)
    config = read_auth_config_as_mlflow_does(mlflow_run["out"] / "basic_auth.ini", monkeypatch)
    assert config.admin_password == password


def test_mlflow_server_refuses_to_start_without_its_secrets(mlflow_run: dict[str, Any]) -> None:
    (mlflow_run["secrets"] / "MLFLOW_BACKEND_STORE_URI").unlink()
    result = start_mlflow(mlflow_run, check=False)
    assert result.returncode != 0
    assert "MLFLOW_BACKEND_STORE_URI" in result.stderr
    assert not (mlflow_run["out"] / "args").exists()


# -- generate-secrets.sh ----------------------------------------------------------------------


def test_generated_secrets_cover_compose_and_kubernetes(secrets_dir: Path) -> None:
    compose = load_compose()
    wanted = {Path(entry["file"]).name for entry in compose["secrets"].values()}
    wanted |= {path.name for path in secret_generator_files().values()}
    assert wanted <= {path.name for path in secrets_dir.iterdir()}
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for path in secrets_dir.iterdir():
        value = path.read_text()
        assert value, path.name
        # Kubernetes' secretGenerator keeps bytes as they are: no trailing newline.
        assert value == value.strip(), path.name


def test_generated_passwords_are_strong_and_distinct(secrets_dir: Path) -> None:
    passwords = {
        name: (secrets_dir / name).read_text()
        for name in (
            "postgres_password",
            "minio_root_password",
            "dataset_s3_secret_key",
            "mlflow_s3_secret_key",
            "mlflow_admin_password",
            "mlflow_flask_secret_key",
            "service_token",
            "gateway_api_tokens",
        )
    }
    for url_secret in ("dataset_database_url", "jobs_database_url", "mlflow_backend_store_uri"):
        passwords[url_secret] = urlsplit((secrets_dir / url_secret).read_text()).password or ""
    for name, value in passwords.items():
        # MLflow refuses an admin password shorter than 12 characters.
        assert re.fullmatch(r"[A-Za-z0-9]{32}", value), name
    assert len(set(passwords.values())) == len(passwords)


def test_generation_never_overwrites_an_existing_secret(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "service_token").write_text("chosen-by-the-operator")
    first = run(["sh", str(GENERATE_SECRETS), str(directory)], {})
    assert "service_token" not in first.stdout
    before = {p.name: p.read_text() for p in directory.iterdir()}
    second = run(["sh", str(GENERATE_SECRETS), str(directory)], {})
    assert second.stdout == ""
    assert {p.name: p.read_text() for p in directory.iterdir()} == before
    assert before["service_token"] == "chosen-by-the-operator"


def test_database_urls_name_their_host(tmp_path: Path) -> None:
    run(["sh", str(GENERATE_SECRETS), str(tmp_path)], {"POSTGRES_HOST": "db.internal"})
    url = urlsplit((tmp_path / "jobs_database_url").read_text())
    assert (url.scheme, url.hostname, url.port, url.username, url.path) == (
        "postgresql",
        "db.internal",
        5432,
        "jobs",
        "/modelyard_jobs",
    )


# -- postgres/init-databases.sh ---------------------------------------------------------------


def test_postgres_init_creates_each_role_and_database_from_its_url(
    tmp_path: Path, secrets_dir: Path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    stub(
        tmp_path / "bin",
        "psql",
        'n=$(ls "$CALLS" | wc -l)\nprintf "%s\\n" "$@" > "$CALLS/$n.args"\ncat > "$CALLS/$n.sql"\n',
    )
    env = {
        "SECRETS_DIR": str(secrets_dir),
        "CALLS": str(calls),
        "POSTGRES_USER": "postgres",
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    subprocess.run(["bash", str(POSTGRES_INIT)], env=env, check=True, capture_output=True)
    created = set()
    for args_file in sorted(calls.glob("*.args")):
        arguments = args_file.read_text().splitlines()
        assert "ON_ERROR_STOP=1" in arguments
        variables = dict(a.split("=", 1) for a in arguments if a.count("=") and "-" not in a[:1])
        sql = args_file.with_suffix(".sql").read_text()
        assert "CREATE ROLE :\"role\" LOGIN PASSWORD :'password'" in sql
        assert 'CREATE DATABASE :"database" OWNER :"role"' in sql
        assert "REVOKE ALL ON DATABASE" in sql
        created.add((variables["role"], variables["password"], variables["database"]))
    expected = set()
    for name in ("dataset_database_url", "jobs_database_url", "mlflow_backend_store_uri"):
        url = urlsplit((secrets_dir / name).read_text())
        expected.add((url.username, url.password, url.path.lstrip("/")))
    assert created == expected


# -- minio/init-buckets.sh --------------------------------------------------------------------


def test_minio_init_gives_each_user_its_own_bucket_only(tmp_path: Path, secrets_dir: Path) -> None:
    compose = load_compose()
    service = compose["services"]["minio-init"]
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for target, source in compose_secret_mounts(service).items():
        (mounted / target).write_text(compose_secret_value(compose, source, secrets_dir))
    log = tmp_path / "mc.log"
    policies = tmp_path / "policies"
    policies.mkdir()
    stub(
        tmp_path / "bin",
        "mc",
        'echo "$*" >> "$LOG"\n'
        'if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$POLICIES/$5.json"; fi\n',
    )
    env = {
        **service["environment"],
        "SECRETS_DIR": str(mounted),
        "LOG": str(log),
        "POLICIES": str(policies),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    subprocess.run(["sh", str(MINIO_INIT)], env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    root_user = (mounted / "minio_root_user").read_text()
    root_password = (mounted / "minio_root_password").read_text()
    assert calls[0] == f"alias set modelyard {env['MINIO_URL']} {root_user} {root_password}"
    datasets, artifacts = env["DATASETS_BUCKET"], env["ARTIFACTS_BUCKET"]
    assert f"mb --ignore-existing modelyard/{datasets}" in calls
    assert f"mb --ignore-existing modelyard/{artifacts}" in calls
    attached = {
        call.split()[-1]: call.split()[4]
        for call in calls
        if call.startswith("admin policy attach")
    }
    users = {
        (mounted / "dataset_s3_access_key").read_text(): datasets,
        (mounted / "mlflow_s3_access_key").read_text(): artifacts,
    }
    assert set(attached) == set(users)
    for user, bucket in users.items():
        policy = json.loads((policies / f"{attached[user]}.json").read_text())
        resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, user
        actions = {a for statement in policy["Statement"] for a in statement["Action"]}
        assert not any(a in actions for a in ("s3:*", "s3:CreateBucket", "s3:DeleteBucket"))
