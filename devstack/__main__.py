"""Local stack commands behind `make up`, `make down` and `make demo`.

python -m devstack up       start the stack in the background, print URL and token
python -m devstack down     stop what `up` started
python -m devstack status   show what `up` started and whether it is alive
python -m devstack demo     run the end-to-end demo and stop everything
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from devstack.demo import run_demo
from devstack.processes import REPO_ROOT
from devstack.stack import Stack, StackOptions

UP_DIR = REPO_ROOT / ".modelyard" / "stack"
STATE_FILE = UP_DIR / "stack.json"


def _read_state() -> dict[str, Any] | None:
    if not STATE_FILE.exists():
        return None
    state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up() -> int:
    state = _read_state()
    if state and any(_alive(pid) for pid in state["pids"].values()):
        print(f"already up: {state['gateway_url']} (make down to stop it)")
        return 0
    port = int(os.environ.get("MODELYARD_UP_GATEWAY_PORT", "8080"))
    # MODELYARD_UP_DASK_WORKERS=2 make up: a Dask scheduler and 2 workers, which the
    # Trainer uses for datasets of MODELYARD_TRAINER_DASK_MIN_ROWS rows or more.
    dask_workers = int(os.environ.get("MODELYARD_UP_DASK_WORKERS", "0"))
    options = StackOptions(
        work_dir=UP_DIR,
        preferred_gateway_port=port,
        persist_secrets=True,
        dask_workers=dask_workers,
    )
    stack = Stack(options)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    assert stack.mlflow is not None
    print(
        f"modelyard is up.\n"
        f"  gateway:  {stack.gateway_url}   (docs: {stack.gateway_url}/docs)\n"
        f"  token:    {stack.api_token}   (admin of the project `default`)\n"
        f"  grpc:     dataset {stack.addresses['dataset']}, jobs {stack.addresses['jobs']}, "
        f"trainer {stack.addresses['trainer']} (service token in {STATE_FILE})\n"
        f"  MLflow:   {stack.mlflow.url} (admin password in {UP_DIR / 'secrets.json'})\n"
        + (f"  Dask:     {stack.dask.address} ({dask_workers} workers)\n" if stack.dask else "")
        + f"  logs:     {UP_DIR / 'logs'}\n"
        f"Try:\n"
        f"  export MODELYARD_URL={stack.gateway_url} MODELYARD_TOKEN={stack.api_token}\n"
        f'  curl -H "Authorization: Bearer $MODELYARD_TOKEN" $MODELYARD_URL/v1/datasets\n'
        f"  modelyard tokens create --role trainer   # a project token for a teammate or a job\n"
        f"Stop it with: make down"
    )
    return 0


def down() -> int:
    state = _read_state()
    if state is None:
        print("nothing to stop")
        return 0
    pids: dict[str, int] = state["pids"]
    # Gateway and services first, infrastructure last: the reverse of start order.
    for name, pid in reversed(list(pids.items())):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name}")
    STATE_FILE.unlink()
    return 0


def status() -> int:
    state = _read_state()
    if state is None:
        print("not up")
        return 1
    for name, pid in state["pids"].items():
        print(f"{name:12} pid {pid:7}  {'running' if _alive(pid) else 'STOPPED'}")
    print(f"gateway: {state['gateway_url']}")
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status, "demo": run_demo}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
