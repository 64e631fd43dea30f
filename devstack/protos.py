"""Generate the Python contracts from protos/ into modelyard/ (not committed).

Run as `python -m devstack.protos` (the Makefile's `protos` target). Messages get
grpcio-tools' .pyi stubs; service stubs get mypy-protobuf's typed stubs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
# google/api and google/rpc, vendored: the repository alone is enough to generate clients.
THIRD_PARTY_ROOTS = [PROTO_ROOT / "third_party" / "googleapis"]
OUTPUT_ROOT = REPO_ROOT / "modelyard"


def _include_dirs() -> list[Path]:
    """protoc's include path: our protos, the vendored google/api + google/rpc, and the
    well-known types grpcio-tools ships."""
    well_known_root = Path(next(iter(grpc_tools.__path__))) / "_proto"
    return [PROTO_ROOT, *THIRD_PARTY_ROOTS, well_known_root]


def contract_sources() -> list[str]:
    """Our .proto files, relative to PROTO_ROOT. The vendored ones are only imported:
    their Python code comes from googleapis-common-protos."""
    third_party = PROTO_ROOT / "third_party"
    return sorted(
        str(path.relative_to(PROTO_ROOT))
        for path in PROTO_ROOT.rglob("*.proto")
        if not path.is_relative_to(third_party)
    )


def generate() -> None:
    sources = contract_sources()
    if OUTPUT_ROOT.exists():
        shutil.rmtree(OUTPUT_ROOT)
    OUTPUT_ROOT.mkdir()
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "grpc_tools.protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--python_out={REPO_ROOT}",
        f"--pyi_out={REPO_ROOT}",
        f"--grpc_python_out={REPO_ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={REPO_ROOT}",
        # Descriptor sets let the gateway and tests read comments and options.
        f"--descriptor_set_out={OUTPUT_ROOT / 'descriptors.binpb'}",
        "--include_imports",
        "--include_source_info",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in [OUTPUT_ROOT, *(p for p in OUTPUT_ROOT.rglob("*") if p.is_dir())]:
        (package_dir / "__init__.py").touch()
    (OUTPUT_ROOT / "py.typed").touch()


if __name__ == "__main__":
    generate()
