"""Upload, read, download, list and delete, on both blob stores and both databases."""

from __future__ import annotations

import asyncio
import io
import math
import time
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from tests.dataset.dataset_support import RunningService, column, failure_of, sha256_of, type_names

State = dataset_pb2.Dataset.State
pytestmark = pytest.mark.slow

CUSTOMERS = (
    b"customer_id,age,income,churned,signup,last_seen,segment,score\n"
    b"c001,34,52000.5,true,2021-03-04,2024-01-02T10:00:00Z,retail,0.25\n"
    b"c002,,61000,false,2021-05-06,2024-01-03T11:30:00Z,online,0.5\n"
    b"c003,45,,true,2020-12-31,,retail,\n"
    b"c004,29,48000.25,false,2022-01-01,2024-02-01T00:00:00+02:00,partner,1.5\n"
    b"c005,51,75000,false,2019-07-15,2024-02-03T08:15:00Z,retail,2\n"
)


def typed_csv(rows: int, seed: int = 1) -> bytes:
    """A CSV with numbers, categories and an id column, as a user exports one."""
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "id": [f"row-{index:06d}" for index in range(rows)],
            "amount": rng.normal(100.0, 15.0, rows),
            "count": rng.integers(0, 50, rows),
            "kind": rng.choice(["a", "b", "c"], rows),
        }
    )
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


async def test_upload_returns_a_ready_dataset_with_schema_and_profile(
    service: RunningService,
) -> None:
    dataset = await service.client.upload(CUSTOMERS, display_name="customers", chunk_bytes=7)

    assert dataset.state == State.READY
    assert dataset.display_name == "customers"
    assert dataset.row_count == 5
    assert dataset.size_bytes == len(CUSTOMERS)
    assert dataset.sha256 == sha256_of(CUSTOMERS)
    assert dataset.csv_options.delimiter == ","
    assert dataset.csv_options.has_header
    assert not dataset.HasField("error")
    assert type_names(dataset) == {
        "customer_id": "STRING",
        "age": "INTEGER",
        "income": "FLOAT",
        "churned": "BOOLEAN",
        "signup": "DATE",
        "last_seen": "TIMESTAMP",
        "segment": "STRING",
        "score": "FLOAT",
    }
    age = column(dataset, "age").profile
    assert age.null_count == 1
    assert age.distinct_count == 4
    assert age.numeric.min == 29
    assert age.numeric.max == 51
    assert age.numeric.mean == pytest.approx(np.mean([34, 45, 29, 51]))
    assert age.numeric.std == pytest.approx(np.std([34, 45, 29, 51]))
    segment = column(dataset, "segment").profile
    assert [(value.value, value.count) for value in segment.top_values] == [
        ("retail", 3),
        ("online", 1),
        ("partner", 1),
    ]
    assert column(dataset, "signup").profile.min_value == "2019-07-15"
    assert column(dataset, "signup").profile.max_value == "2022-01-01"
    assert column(dataset, "last_seen").profile.min_value == "2024-01-02T10:00:00+00:00"
    assert (await service.client.get(dataset.dataset_id)) == dataset


async def test_id_like_columns_are_flagged(service: RunningService) -> None:
    dataset = await service.client.upload(typed_csv(2000))

    assert column(dataset, "id").id_like
    assert column(dataset, "id").profile.distinct_count == 2000
    assert not column(dataset, "count").id_like  # 50 distinct values in 2000 rows
    assert not column(dataset, "kind").id_like
    assert not column(dataset, "amount").id_like  # floats are never ids


async def test_read_dataset_gives_the_contract_arrow_types_and_values(
    service: RunningService,
) -> None:
    dataset = await service.client.upload(CUSTOMERS)
    table, _ = await service.client.read(dataset.dataset_id)

    assert table.schema.types == [
        pa.string(),
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.date32(),
        pa.timestamp("us", tz="UTC"),
        pa.string(),
        pa.float64(),
    ]
    frame = table.to_pandas()
    assert frame["customer_id"].tolist() == ["c001", "c002", "c003", "c004", "c005"]
    assert frame["age"].isna().tolist() == [False, True, False, False, False]
    assert frame["income"].iloc[0] == 52000.5
    assert frame["last_seen"].iloc[3].isoformat() == "2024-01-31T22:00:00+00:00"


async def test_read_dataset_projects_columns_in_the_requested_order(
    service: RunningService,
) -> None:
    data = typed_csv(3000)
    dataset = await service.client.upload(data)
    table, responses = await service.client.read(
        dataset.dataset_id, columns=["kind", "amount"], batch_rows=1000
    )

    expected = pacsv.read_csv(io.BytesIO(data))
    assert table.column_names == ["kind", "amount"]
    assert table.column("amount").to_pylist() == expected.column("amount").to_pylist()
    assert table.column("kind").to_pylist() == expected.column("kind").to_pylist()
    assert responses == 1 + 3  # the schema, then one record batch per 1000 rows


@pytest.mark.parametrize(
    ("columns", "batch_rows", "code", "reason"),
    [
        (["nope"], 0, grpc.StatusCode.INVALID_ARGUMENT, "COLUMN_NOT_FOUND"),
        (["kind", "kind"], 0, grpc.StatusCode.INVALID_ARGUMENT, "COLUMN_REPEATED"),
        ([], -1, grpc.StatusCode.INVALID_ARGUMENT, "BATCH_ROWS_INVALID"),
    ],
)
async def test_read_dataset_refuses_bad_requests(
    service: RunningService,
    columns: list[str],
    batch_rows: int,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    from tests.dataset.dataset_support import failure_of

    dataset = await service.client.upload(typed_csv(10))
    failure = await failure_of(service.client.read(dataset.dataset_id, columns, batch_rows))
    assert (failure.code, failure.reason) == (code, reason)


async def test_unknown_and_failed_datasets_cannot_be_read(service: RunningService) -> None:
    from tests.dataset.dataset_support import failure_of

    missing = await failure_of(service.client.read("0" * 32))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND")
    empty = await failure_of(service.client.get(""))
    assert (empty.code, empty.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "DATASET_ID_REQUIRED")

    refused = await service.client.upload_failure(b"a,b\n1,2\n3\n")
    failed = await service.client.get(refused.metadata["dataset_id"])
    assert failed.state == State.FAILED
    not_ready = await failure_of(service.client.read(failed.dataset_id))
    assert (not_ready.code, not_ready.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "DATASET_NOT_READY",
    )
    download = await failure_of(service.client.download(failed.dataset_id))
    assert download.reason == "DATASET_NOT_READY"


async def test_download_streams_the_original_bytes(service: RunningService) -> None:
    data = typed_csv(40_000)  # several chunks
    dataset = await service.client.upload(data)
    body, content_types = await service.client.download(dataset.dataset_id)
    assert body == data
    assert content_types == {"text/csv"}


async def test_failed_upload_is_recorded_and_leaves_no_files(service: RunningService) -> None:
    failure = await service.client.upload_failure(b"a,b\n1,2\n3,4,5\n", display_name="ragged")

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "RAGGED_ROWS"
    dataset = await service.client.get(failure.metadata["dataset_id"])
    assert dataset.state == State.FAILED
    assert dataset.error.message == failure.message
    assert dataset.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert dataset.columns == []
    assert dataset.row_count == 0
    assert service.blob_keys(dataset.dataset_id) == []


async def test_delete_removes_the_row_and_the_files(service: RunningService) -> None:
    from tests.dataset.dataset_support import failure_of

    dataset = await service.client.upload(typed_csv(100))
    assert service.blobs(dataset.dataset_id) == ["data.parquet", "original.csv.zst"]

    await service.client.delete(dataset.dataset_id)

    assert service.blob_keys(dataset.dataset_id) == []
    gone = await failure_of(service.client.get(dataset.dataset_id))
    assert gone.code == grpc.StatusCode.NOT_FOUND
    again = await failure_of(service.client.delete(dataset.dataset_id))
    assert again.reason == "DATASET_NOT_FOUND"


async def test_list_pages_newest_first_with_filters(service: RunningService) -> None:
    from tests.dataset.dataset_support import failure_of

    tag = f"pages-{id(service)}"
    uploaded = [
        (await service.client.upload(b"a\n1\n", display_name=f"{tag}-{index}")).dataset_id
        for index in range(5)
    ]
    await service.client.upload_failure(b"", display_name=f"{tag}-empty")

    seen: list[str] = []
    token = ""
    while True:
        page = await service.client.list(
            page_size=2, page_token=token, display_name_contains=tag.upper(), state=State.READY
        )
        assert len(page.datasets) <= 2
        seen.extend(dataset.dataset_id for dataset in page.datasets)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(uploaded))

    failed = await service.client.list(display_name_contains=f"{tag}-empty")
    assert [dataset.state for dataset in failed.datasets] == [State.FAILED]
    first = await service.client.list(page_size=1, display_name_contains=tag)
    other_filter = await failure_of(
        service.client.list(page_size=1, page_token=first.next_page_token)
    )
    assert other_filter.reason == "PAGE_TOKEN_INVALID"
    garbage = await failure_of(service.client.list(page_token="not-a-token"))
    assert garbage.reason == "PAGE_TOKEN_INVALID"


async def test_list_filter_treats_wildcards_as_text(service: RunningService) -> None:
    await service.client.upload(b"a\n1\n", display_name="100% real_data")
    await service.client.upload(b"a\n1\n", display_name="100 percent realXdata")
    found = await service.client.list(display_name_contains="0% real_")
    assert [dataset.display_name for dataset in found.datasets] == ["100% real_data"]


async def test_repeated_request_id_returns_the_first_dataset(service: RunningService) -> None:
    first = await service.client.upload(CUSTOMERS, request_id=f"once-{id(service)}")
    again = await service.client.upload(b"other,content\n1,2\n", request_id=first.request_id)

    assert again == first
    listed = await service.client.list(display_name_contains="test", page_size=1000)
    assert sum(item.request_id == first.request_id for item in listed.datasets) == 1


async def test_request_id_of_a_failed_upload_can_be_retried(service: RunningService) -> None:
    request_id = f"retry-{id(service)}"
    failure = await service.client.upload_failure(b"a,b\n1,2\n3\n", request_id=request_id)
    assert failure.reason == "RAGGED_ROWS"

    retried = await service.client.upload(b"a,b\n1,2\n", request_id=request_id)
    assert retried.state == State.READY
    assert retried.request_id == request_id
    assert retried.dataset_id != failure.metadata["dataset_id"]


async def test_concurrent_uploads_with_one_request_id_make_one_dataset(
    service: RunningService,
) -> None:
    request_id = f"race-{id(service)}"
    results = await asyncio.gather(
        *(service.client.upload(typed_csv(20_000), request_id=request_id) for _ in range(3)),
        return_exceptions=True,
    )
    datasets = [result for result in results if isinstance(result, dataset_pb2.Dataset)]
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert datasets, results
    assert {dataset.dataset_id for dataset in datasets} == {datasets[0].dataset_id}
    assert all(error.code() == grpc.StatusCode.ABORTED for error in refused)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"delimiter": ";"}, ["a", "b"]),
        ({"delimiter": "\t"}, ["a", "b"]),
        ({"delimiter": "\\t"}, ["a", "b"]),
        ({"has_header": False}, ["column_1", "column_2"]),
    ],
)
async def test_csv_options(
    service: RunningService, options: dict[str, Any], names: list[str]
) -> None:
    separator = {";": b";", "\t": b"\t", "\\t": b"\t"}.get(str(options.get("delimiter")), b",")
    data = separator.join([b"a", b"b"]) + b"\n" + separator.join([b"1", b"2.5"]) + b"\n"
    if options.get("has_header") is False:
        data = b"1" + separator + b"2.5\n3" + separator + b"4\n"
    dataset = await service.client.upload(data, **options)
    assert [item.name for item in dataset.columns] == names
    assert type_names(dataset)[names[0]] == "INTEGER"
    assert type_names(dataset)[names[1]] == "FLOAT"
    assert dataset.csv_options.has_header == options.get("has_header", True)


async def test_types_settled_late_in_the_file_use_every_value(service: RunningService) -> None:
    """The first block says INTEGER / empty; values far below change the types."""
    rows = 150_000  # well past the reader's first block
    head = b"".join(b"%d,%d,,x\n" % (index, index % 7) for index in range(rows))
    tail = b"3.5,7,12,x\n" + b"8,oops,,x\n"
    dataset = await service.client.upload(b"whole,mixed,sparse,constant\n" + head + tail)

    assert type_names(dataset) == {
        "whole": "FLOAT",
        "mixed": "STRING",
        "sparse": "INTEGER",
        "constant": "STRING",
    }
    assert dataset.row_count == rows + 2
    assert column(dataset, "sparse").profile.null_count == rows + 1
    table, _ = await service.client.read(dataset.dataset_id, columns=["mixed", "sparse"])
    assert table.column("mixed").to_pylist()[-2:] == ["7", "oops"]
    assert table.column("sparse").to_pylist()[-2] == 12


async def test_large_upload_is_profiled_in_bounded_memory(service: RunningService) -> None:
    """More rows than the exact-distinct limit: estimates are flagged, and close."""
    data = typed_csv(120_000, seed=5)
    dataset = await service.client.upload(data, chunk_bytes=3 * 1024 * 1024)

    ids = column(dataset, "id").profile
    assert ids.distinct_count_estimated
    assert ids.distinct_count == pytest.approx(120_000, rel=0.03)
    assert column(dataset, "id").id_like
    kinds = column(dataset, "kind").profile
    assert not kinds.distinct_count_estimated
    assert kinds.distinct_count == 3
    assert sum(value.count for value in kinds.top_values) == 120_000
    amount = column(dataset, "amount").profile.numeric
    expected = pacsv.read_csv(io.BytesIO(data)).column("amount").to_numpy()
    assert amount.mean == pytest.approx(float(expected.mean()))
    assert amount.std == pytest.approx(float(expected.std()))
    assert math.isclose(amount.min, float(expected.min()))
    body, _ = await service.client.download(dataset.dataset_id)
    assert sha256_of(body) == dataset.sha256


async def test_reads_do_not_depend_on_the_local_parquet_copy(service: RunningService) -> None:
    """With S3, a copy is kept for reads; without it, reads fetch the object again."""
    data = typed_csv(5000)
    dataset = await service.client.upload(data)
    cache = service.settings.read_cache_dir() / f"{dataset.dataset_id}.parquet"
    if service.settings.blob_store == "s3":
        assert cache.exists()
        cache.unlink()
    first, _ = await service.client.read(dataset.dataset_id)
    second, _ = await service.client.read(dataset.dataset_id)
    assert first.equals(second)
    assert first.num_rows == 5000
    await service.client.delete(dataset.dataset_id)
    assert not cache.exists()


async def test_names_with_dots_and_spaces_read_back(service: RunningService) -> None:
    dataset = await service.client.upload(
        b"sepal.length,petal width,class\n5.1,0.2,setosa\n7.0,1.4,versicolor\n"
    )
    table, _ = await service.client.read(
        dataset.dataset_id, columns=["petal width", "sepal.length"]
    )
    assert table.column_names == ["petal width", "sepal.length"]
    assert table.column("sepal.length").to_pylist() == [5.1, 7.0]


@pytest.mark.parametrize("dataset_id", ["a\x00b", "x" * 300, "line\nbreak"])
async def test_ids_that_cannot_be_ids_are_refused(service: RunningService, dataset_id: str) -> None:
    failure = await failure_of(service.client.get(dataset_id))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DATASET_ID_INVALID",
    )


async def test_parquet_access_lets_dask_workers_read_the_row_groups(
    service: RunningService,
) -> None:
    from services.training.fit.dask_parts import open_url, row_group_rows

    dataset = await service.client.upload(typed_csv(3000))
    request = dataset_service_pb2.GetParquetAccessRequest(dataset_id=dataset.dataset_id)
    access = await service.client.stub.GetParquetAccess(request, timeout=30)
    assert access.dataset_id == dataset.dataset_id
    assert access.row_count == dataset.row_count == 3000
    # Read the way a Dask worker does (byte ranges over HTTP, or the shared file).
    assert sum(await asyncio.to_thread(row_group_rows, access.url)) == 3000
    with open_url(access.url) as source:
        table = await asyncio.to_thread(pq.read_table, source)
    expected, _ = await service.client.read(dataset.dataset_id)
    assert table.equals(expected)
    if access.url.startswith("http"):
        # S3: a presigned GET of this one object, that expires; no credential in it.
        assert "X-Amz-Signature=" in access.url
        assert f"/datasets/{dataset.dataset_id}/data.parquet?" in access.url
        assert "X-Amz-Expires=900" in access.url
        lifetime = access.expire_time.ToSeconds() - time.time()
        assert 800 < lifetime <= 900
    else:
        assert access.url.startswith("file:///")
        assert not access.HasField("expire_time")

    missing = await failure_of(
        service.client.stub.GetParquetAccess(
            dataset_service_pb2.GetParquetAccessRequest(dataset_id="0" * 32), timeout=30
        )
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND")
    refused = await service.client.upload_failure(b"a,b\n1,2\n3\n")
    not_ready = await failure_of(
        service.client.stub.GetParquetAccess(
            dataset_service_pb2.GetParquetAccessRequest(dataset_id=refused.metadata["dataset_id"]),
            timeout=30,
        )
    )
    assert not_ready.reason == "DATASET_NOT_READY"
