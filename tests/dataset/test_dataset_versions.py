"""Versions of a named dataset, lookups by name, and deletes that only one caller wins."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from tests.dataset.dataset_support import (
    CHUNK,
    DatasetClient,
    RunningService,
    failure_of,
    upload_requests,
)

State = dataset_pb2.Dataset.State
pytestmark = pytest.mark.slow


async def lookup(client: DatasetClient, reference: str) -> dataset_pb2.Dataset:
    request = dataset_service_pb2.LookupDatasetRequest(reference=reference)
    response = await client.stub.LookupDataset(request, timeout=30)
    dataset: dataset_pb2.Dataset = response.dataset
    return dataset


async def versions(
    client: DatasetClient, name: str, page_size: int = 0, page_token: str = ""
) -> dataset_service_pb2.ListDatasetVersionsResponse:
    request = dataset_service_pb2.ListDatasetVersionsRequest(
        display_name=name, page_size=page_size, page_token=page_token
    )
    response: dataset_service_pb2.ListDatasetVersionsResponse = (
        await client.stub.ListDatasetVersions(request, timeout=30)
    )
    return response


async def test_uploads_under_one_name_are_its_versions(service: RunningService) -> None:
    client = service.client
    name = f"sales-{uuid.uuid4().hex[:6]}"
    first = await client.upload(b"a,b\n1,2\n", display_name=name)
    second = await client.upload(b"a,b\n1,2\n3,4\n", new_version_of=name, display_name="")
    third = await client.upload(b"a,b\n5,6\n", new_version_of=second.dataset_id, display_name="")
    failed = await client.upload_failure(b"a,b\n1\n", new_version_of=name, display_name="")

    assert (first.version, second.version, third.version) == (1, 2, 3)
    assert second.display_name == third.display_name == name
    assert failed.reason == "RAGGED_ROWS"
    assert (await client.get(failed.metadata["dataset_id"])).version == 0

    listed = await versions(client, name)
    assert [item.version for item in listed.datasets] == [3, 2, 1]
    page = await versions(client, name, page_size=2)
    rest = await versions(client, name, page_size=2, page_token=page.next_page_token)
    assert [item.version for item in [*page.datasets, *rest.datasets]] == [3, 2, 1]
    assert rest.next_page_token == ""

    assert (await lookup(client, name)).dataset_id == third.dataset_id
    assert (await lookup(client, f"{name}@2")).dataset_id == second.dataset_id
    assert (await lookup(client, first.dataset_id)).version == 1

    await client.delete(third.dataset_id)
    assert (await lookup(client, name)).version == 2
    fourth = await client.upload(b"a,b\n7,8\n", new_version_of=name, display_name="")
    assert fourth.version == 4  # numbers are never reused


async def test_each_project_numbers_its_own_versions(service: RunningService) -> None:
    """Two projects each upload one name twice, interleaved: each gets versions 1 and 2,
    and lookups and lists by name see only the caller's project. A service's own call that
    names no project looks names up in `default`, where it uploads."""
    stub, name = service.client.stub, f"iris-{uuid.uuid4().hex[:6]}"

    def acting_for(project: str) -> tuple[tuple[str, str], ...]:
        return (("x-modelyard-project", project),)

    async def upload(project: str) -> dataset_pb2.Dataset:
        requests = upload_requests(b"a,b\n1,2\n", name, CHUNK)
        made: dataset_pb2.Dataset = await stub.UploadDataset(
            requests, metadata=acting_for(project), timeout=60
        )
        return made

    made: dict[str, list[dataset_pb2.Dataset]] = {"proj-a": [], "proj-b": []}
    for _ in range(2):
        for project, uploads in made.items():
            uploads.append(await upload(project))
    for project, uploads in made.items():
        assert [(d.project_id, d.version) for d in uploads] == [(project, 1), (project, 2)]
        metadata = acting_for(project)
        listed = await stub.ListDatasetVersions(
            dataset_service_pb2.ListDatasetVersionsRequest(display_name=name), metadata=metadata
        )
        assert [d.dataset_id for d in listed.datasets] == [d.dataset_id for d in uploads[::-1]]
        for reference, expected in ((name, uploads[1]), (f"{name}@1", uploads[0])):
            found = await stub.LookupDataset(
                dataset_service_pb2.LookupDatasetRequest(reference=reference), metadata=metadata
            )
            assert found.dataset.dataset_id == expected.dataset_id
        missing = await failure_of(
            stub.LookupDataset(
                dataset_service_pb2.LookupDatasetRequest(reference=f"{name}@3"), metadata=metadata
            )
        )
        assert missing.reason == "DATASET_NOT_FOUND"
    unscoped = await failure_of(lookup(service.client, name))
    assert unscoped.reason == "DATASET_NOT_FOUND"
    own = await service.client.upload(b"a\n1\n", display_name=name)
    assert (own.project_id, own.version) == ("default", 1)
    assert (await lookup(service.client, name)).dataset_id == own.dataset_id


async def test_a_new_version_of_nothing_is_refused(service: RunningService) -> None:
    failure = await service.client.upload_failure(
        b"a\n1\n", display_name="", new_version_of=f"no-such-{uuid.uuid4().hex[:6]}"
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND")
    name = f"named-{uuid.uuid4().hex[:6]}"
    await service.client.upload(b"a\n1\n", display_name=name)
    failure = await service.client.upload_failure(
        b"a\n1\n", display_name="another", new_version_of=name
    )
    assert failure.reason == "DISPLAY_NAME_MISMATCH"


async def test_lookups_that_find_nothing(service: RunningService) -> None:
    name = f"lookup-{uuid.uuid4().hex[:6]}"
    await service.client.upload(b"a\n1\n", display_name=name)
    for reference in [f"{name}@2", f"{name}@0", "nothing-by-this-name", f"{name}@x"]:
        failure = await failure_of(lookup(service.client, reference))
        assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND")
    failure = await failure_of(lookup(service.client, ""))
    assert failure.reason == "DATASET_ID_REQUIRED"  # as CreateTrainingJob says of it


@pytest.mark.parametrize("reference", ["name\x00", "?\u00f7d\x00x", "tab\tname"])
async def test_a_reference_with_control_characters_is_invalid(
    service: RunningService, reference: str
) -> None:
    failure = await failure_of(lookup(service.client, reference))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DATASET_ID_INVALID",
    )
    failure = await service.client.upload_failure(
        b"a\n1\n", display_name="", new_version_of=reference
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DATASET_ID_INVALID",
    )


async def test_a_name_with_an_at_sign_is_matched_whole_first(service: RunningService) -> None:
    name = f"team@{uuid.uuid4().hex[:6]}"
    dataset = await service.client.upload(b"a\n1\n", display_name=f"{name}@2")
    assert (await lookup(service.client, f"{name}@2")).dataset_id == dataset.dataset_id
    assert (await lookup(service.client, f"{name}@2@1")).dataset_id == dataset.dataset_id


async def test_concurrent_deletes_of_one_dataset_succeed_once(service: RunningService) -> None:
    dataset = await service.client.upload(b"a,b\n1,2\n" * 50, display_name="deleted-once")
    results = await asyncio.gather(
        *(service.client.delete(dataset.dataset_id) for _ in range(6)), return_exceptions=True
    )
    succeeded = [result for result in results if result is None]
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(succeeded) == 1, results
    assert {error.code() for error in refused} == {grpc.StatusCode.NOT_FOUND}
    assert service.blob_keys(dataset.dataset_id) == []
    failure = await failure_of(service.client.delete(dataset.dataset_id))
    assert failure.code == grpc.StatusCode.NOT_FOUND
