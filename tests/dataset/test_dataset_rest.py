"""The Dataset service through a real gateway, as REST clients use it: the new formats'
bodies, versions, and early refusals that reach clients still sending their body."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import io
import json
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from devstack.components import S3Server
from devstack.processes import ManagedProcess, free_port, port_open
from tests.dataset.dataset_support import TOKEN, start_process

pytestmark = pytest.mark.slow
API_TOKEN = secrets.token_urlsafe(16)


@dataclass
class Rest:
    url: str

    def headers(self, content_type: str = "text/csv") -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": content_type}


@pytest.fixture(scope="module")
async def rest(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    database_url_factory: Callable[[str], str],
) -> AsyncIterator[Rest]:
    tmp = tmp_path_factory.mktemp("dataset-rest")
    url = await asyncio.to_thread(database_url_factory, "modelyard_dataset_rest")
    dataset, settings = await asyncio.to_thread(
        start_process, tmp, s3_server, url, MODELYARD_DATASET_MAX_UPLOAD_BYTES=str(16 * 2**20)
    )
    port = free_port()
    gateway = ManagedProcess(
        name="gateway",
        command=[sys.executable, "-m", "gateway"],
        env={
            "MODELYARD_GATEWAY_HOST": "127.0.0.1",
            "MODELYARD_GATEWAY_PORT": str(port),
            "MODELYARD_GATEWAY_DATASET_SERVICE_ADDRESS": settings.listen_address,
            "MODELYARD_GATEWAY_JOBS_SERVICE_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELYARD_GATEWAY_TRAINER_SERVICE_ADDRESS": f"127.0.0.1:{free_port()}",
            "MODELYARD_GATEWAY_API_TOKENS": API_TOKEN,
            "MODELYARD_GATEWAY_DEV_MODE": "false",
            "MODELYARD_SERVICE_TOKEN": TOKEN,
            "MODELYARD_STATE_DIR": str(tmp / "gateway-state"),
            "PYTHONUNBUFFERED": "1",
        },
        log_path=tmp / "logs" / "gateway.log",
    ).start()
    try:
        await asyncio.to_thread(
            gateway.wait_until, lambda: port_open("127.0.0.1", port), timeout=60
        )
        yield Rest(f"http://127.0.0.1:{port}")
    finally:
        await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(dataset.stop)


def post(rest: Rest, body: bytes, content_type: str, **params: str) -> requests.Response:
    return requests.post(
        f"{rest.url}/v1/datasets",
        params=params,
        data=body,
        headers=rest.headers(content_type),
        timeout=120,
    )


def parquet_body() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), sink)
    return sink.getvalue()


def xlsx_body() -> bytes:
    book = openpyxl.Workbook()
    book.active.append(["a", "b"])
    for index in range(3):
        book.active.append([index, f"v{index}"])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


BODIES = [
    ("application/gzip", lambda: gzip.compress(b"a,b\n1,x\n2,y\n3,z\n"), "COMPRESSION_GZIP"),
    ("text/tab-separated-values", lambda: b"a\tb\n1\tx\n2\ty\n3\tz\n", "COMPRESSION_NONE"),
    ("application/vnd.apache.parquet", parquet_body, "COMPRESSION_NONE"),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        xlsx_body,
        "COMPRESSION_NONE",
    ),
    ("application/octet-stream", parquet_body, "COMPRESSION_NONE"),
]


@pytest.mark.parametrize(("content_type", "body", "compression"), BODIES)
def test_the_gateway_takes_every_format(
    rest: Rest, content_type: str, body: Callable[[], bytes], compression: str
) -> None:
    data = body()
    response = post(rest, data, content_type, displayName="rest-formats")
    assert response.status_code == 200, response.text
    dataset = response.json()
    assert dataset["state"] == "READY"
    assert dataset["rowCount"] == "3"
    assert [column["name"] for column in dataset["columns"]] == ["a", "b"]
    assert dataset["sourceFormat"]["compression"] == compression
    download = requests.get(
        f"{rest.url}/v1/datasets/{dataset['datasetId']}:download",
        headers=rest.headers(),
        timeout=60,
    )
    assert download.content == data


def download(rest: Rest, dataset_id: str, **params: str) -> requests.Response:
    return requests.get(
        f"{rest.url}/v1/datasets/{dataset_id}:download",
        params=params,
        headers=rest.headers(),
        timeout=60,
    )


def test_a_parquet_upload_downloads_as_csv_and_a_csv_one_as_parquet_over_rest(
    rest: Rest,
) -> None:
    from_parquet = post(
        rest, parquet_body(), "application/vnd.apache.parquet", displayName="rest-download"
    ).json()
    from_csv = post(rest, b"a,b\n1,x\n2,\n", "text/csv", displayName="rest-download").json()

    as_csv = download(rest, from_parquet["datasetId"], format="CSV")
    as_parquet = download(rest, from_csv["datasetId"], format="PARQUET")
    original = download(rest, from_parquet["datasetId"], format="ORIGINAL")

    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"] == (
        f'attachment; filename="{from_parquet["datasetId"]}.csv"'
    )
    assert as_csv.content == b'"a","b"\n1,"x"\n2,"y"\n3,"z"\n'
    assert as_parquet.status_code == 200, as_parquet.text
    assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert as_parquet.headers["content-disposition"] == (
        f'attachment; filename="{from_csv["datasetId"]}.parquet"'
    )
    table = pq.read_table(io.BytesIO(as_parquet.content))
    assert table.to_pydict() == {"a": [1, 2], "b": ["x", None]}
    assert original.content == parquet_body()
    assert original.headers["content-disposition"].endswith('.parquet"')


def test_an_unknown_download_format_is_a_400_with_its_reason(rest: Rest) -> None:
    dataset = post(rest, b"a\n1\n", "text/csv", displayName="rest-download-bad").json()

    response = download(rest, dataset["datasetId"], format="XLSX")

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["details"][0]["reason"] == "QUERY_PARAMETER_INVALID"
    assert download(rest, dataset["datasetId"]).content == b"a\n1\n"


def test_versions_over_rest(rest: Rest) -> None:
    name = f"rest-versions-{secrets.token_hex(3)}"
    first = post(rest, b",a\n0,1\n1,2\n", "text/csv", displayName=name).json()
    second = post(rest, b",a\n0,1\n1,2\n2,3\n", "text/csv", newVersionOf=name).json()
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["headerRepairs"] == [
        {
            "columnIndex": 1,
            "originalName": "",
            "newName": "unnamed_0",
            "reason": "REASON_BLANK_NAME",
        }
    ]
    assert first["columns"][0]["rowNumber"] is True
    listed = requests.get(
        f"{rest.url}/v1/datasets:versions",
        params={"displayName": name},
        headers=rest.headers(),
        timeout=30,
    ).json()
    assert [item["version"] for item in listed["datasets"]] == ["2", "1"]
    found = requests.get(
        f"{rest.url}/v1/datasets:lookup",
        params={"reference": f"{name}@1"},
        headers=rest.headers(),
        timeout=30,
    ).json()
    assert found["dataset"]["datasetId"] == first["datasetId"]
    missing = post(rest, b"a\n1\n", "text/csv", newVersionOf=f"{name}-typo")
    assert missing.status_code == 404
    assert reason_of(missing.json()) == "DATASET_NOT_FOUND"


def test_concurrent_deletes_over_rest_answer_200_once_and_404_after(rest: Rest) -> None:
    dataset = post(rest, b"a,b\n1,2\n3,4\n", "text/csv", displayName="deleted-once").json()
    url = f"{rest.url}/v1/datasets/{dataset['datasetId']}"

    def delete() -> requests.Response:
        return requests.delete(url, headers=rest.headers(), timeout=60)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: delete(), range(6)))
    assert sorted(answer.status_code for answer in answers) == [200] + [404] * 5
    assert {reason_of(a.json()) for a in answers if a.status_code == 404} == {"DATASET_NOT_FOUND"}
    assert delete().status_code == 404
    assert requests.get(url, headers=rest.headers(), timeout=60).status_code == 404


def reason_of(document: dict[str, Any]) -> str:
    details = document["error"]["details"]
    return str(next(item["reason"] for item in details if "reason" in item))


def big_body(megabytes: int) -> Iterator[bytes]:
    """A body sent in pieces, as a client reading a file sends it."""
    yield b"a,b\n"
    piece = b"1,2\n" * (256 * 1024)
    for _ in range(megabytes):
        yield piece


REFUSALS = [
    ({"displayName": " "}, API_TOKEN, 400, "DISPLAY_NAME_INVALID"),
    ({"displayName": "x", "delimiter": "::"}, API_TOKEN, 400, "DELIMITER_INVALID"),
    ({"displayName": "x"}, "not-the-token", 401, None),
    ({"displayName": "x"}, API_TOKEN, 429, "UPLOAD_TOO_LARGE"),  # 40 MB over a 16 MiB limit
]
# Named ids, not ones made from the values: the token is random per process, and
# pytest-xdist requires every worker to collect the same test ids.
REFUSAL_IDS = ["blank-name", "bad-delimiter", "wrong-token", "too-large"]


@pytest.mark.parametrize(("params", "token", "status", "reason"), REFUSALS, ids=REFUSAL_IDS)
def test_an_early_refusal_reaches_requests_while_it_sends(
    rest: Rest, params: dict[str, str], token: str, status: int, reason: str | None
) -> None:
    response = requests.post(
        f"{rest.url}/v1/datasets",
        params=params,
        data=big_body(40),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
        timeout=120,
    )
    assert response.status_code == status, response.text
    if reason is not None:
        assert reason_of(response.json()) == reason


@pytest.mark.parametrize(("params", "token", "status", "reason"), REFUSALS, ids=REFUSAL_IDS)
def test_an_early_refusal_reaches_urllib_while_it_sends(
    rest: Rest, params: dict[str, str], token: str, status: int, reason: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "body.csv"
    with path.open("wb") as handle:
        for piece in big_body(40):
            handle.write(piece)
    query = "&".join(f"{key}={value}" for key, value in params.items()).replace(" ", "%20")
    with path.open("rb") as body:
        request = urllib.request.Request(
            f"{rest.url}/v1/datasets?{query}",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/csv",
                "Content-Length": str(path.stat().st_size),
            },
        )
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=120)
    # An HTTPError holds the response open; close it so no socket is left to
    # the garbage collector (a ResourceWarning, an error under our settings).
    with raised.value as refusal:
        assert refusal.code == status
        if reason is not None:
            assert reason_of(json.loads(refusal.read())) == reason
