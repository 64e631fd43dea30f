"""The architecture's boundaries, checked on the source itself.

A service imports only its own package, the shared runtime package and the
generated contracts (plus third-party libraries); the gateway likewise; the
runtime package imports no service. Only the Trainer may import MLflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"services", "gateway", "runtime", "modelyard", "devstack", "tests", "bench"}

ALLOWED = {
    "services/dataset": {"services.dataset", "runtime", "modelyard"},
    "services/jobs": {"services.jobs", "runtime", "modelyard"},
    "services/training": {"services.training", "runtime", "modelyard"},
    "gateway": {"gateway", "runtime", "modelyard"},
    "runtime": {"runtime", "modelyard"},
}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` counts as a.b.c: c may be a module (a.b's package is
            # then all it imports), or a name of a.b (a.b.c is still inside a.b).
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            modules.append("<relative>")
    return modules


def allowed(module: str, prefixes: set[str]) -> bool:
    top = module.split(".")[0]
    if top not in FIRST_PARTY:
        return True
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert files, f"{package} has no Python files"
    violations = [
        f"{path.relative_to(REPO_ROOT)} imports {module}"
        for path in files
        for module in imported_modules(path)
        if module == "<relative>" or not allowed(module, ALLOWED[package])
    ]
    assert violations == []


@pytest.mark.parametrize("package", ["services/dataset", "services/jobs", "gateway", "runtime"])
def test_only_the_trainer_imports_mlflow(package: str) -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if any(module.split(".")[0] == "mlflow" for module in imported_modules(path))
    ]
    assert offenders == []


# Inside the Trainer, a request walks down one branch: Predict stays in serving/ and
# model/; a job goes work/ -> fit/ -> tracking/, a scoring job work/ -> batch/ -> serving/.
# A part imports only the parts below it (and the process's own settings and metrics),
# so each can grow without the others.
TRAINER_PARTS = {
    "model": {"model"},
    "fit": {"model", "fit"},
    "tracking": {"model", "fit", "tracking"},
    "serving": {"model", "tracking", "serving"},
    "batch": {"model", "fit", "serving", "batch"},
    "work": {"model", "fit", "tracking", "serving", "batch", "work"},
}
TRAINER_PROCESS_MODULES = {
    "services.training.settings",
    "services.training.metrics",
    "services.training.reasons",
}


@pytest.mark.parametrize("part", sorted(TRAINER_PARTS))
def test_trainer_parts_import_only_the_parts_below_them(part: str) -> None:
    allowed_parts = {f"services.training.{name}" for name in TRAINER_PARTS[part]}
    violations = []
    for path in sorted((REPO_ROOT / "services" / "training" / part).rglob("*.py")):
        for module in imported_modules(path):
            if not module.startswith("services.training"):
                continue
            if any(
                module == allowed or module.startswith(allowed + ".")
                for allowed in allowed_parts | TRAINER_PROCESS_MODULES
            ):
                continue
            violations.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
    assert violations == []
