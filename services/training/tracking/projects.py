"""Where a project's models and runs live in MLflow, whose names are global.

A model of the `default` project keeps its own name (every model made before projects
stays where it is); a model of another project is registered as `<project>=<name>`.
`=` is allowed by MLflow (which refuses `/` and `:`) and in NATS KV keys (the champion
lock's key holds the name) but never in modelyard's model names (runtime/limits.py),
so no name of one project can be taken for another's. Runs go to the experiment
`<experiment>` for `default` and `<experiment>/<project>` for the others.
"""

from __future__ import annotations

from runtime.access import DEFAULT_PROJECT
from runtime.limits import PROJECT_MODEL_SEPARATOR

SEPARATOR = PROJECT_MODEL_SEPARATOR


def registry_name(project: str | None, name: str) -> str:
    """The MLflow registered model name of `name` in `project` (None: as given)."""
    if not project or project == DEFAULT_PROJECT:
        return name
    return f"{project}{SEPARATOR}{name}"


def public_name(registered: str) -> str:
    """The name a project's callers use for the MLflow model `registered`."""
    return registered.rpartition(SEPARATOR)[2]


def in_project(registered: str, project: str | None) -> bool:
    """Whether the MLflow model `registered` is one of `project`'s (None: any)."""
    if project is None:
        return True
    if project == DEFAULT_PROJECT:
        return SEPARATOR not in registered
    return registered.startswith(f"{project}{SEPARATOR}")


def experiment_name(base: str, project: str) -> str:
    if not project or project == DEFAULT_PROJECT:
        return base
    return f"{base}/{project}"
