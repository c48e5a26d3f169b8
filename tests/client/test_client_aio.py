"""``instahide_client.aio.AsyncInstaHideClient`` against a real server: the same answers as the sync client."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from instahide_client import InstaHideClient, InstaHideError
from instahide_client.aio import AsyncInstaHideClient
from membership_set import membership_set


def test_the_async_client_does_what_the_sync_client_does(tmp_path_factory, small_pool_path, launch_server):
    tmp = tmp_path_factory.mktemp("aio-server")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 5
    outputs = membership_set(80, seed=2)

    async def scenario(target: str) -> dict:
        async with AsyncInstaHideClient(target) as client:
            found = {"health": await client.health(), "info": await client.server_info()}
            found["seeded"] = await client.encode(images, labels, num_classes=5, seed=3, batch_size=4,
                                                  return_keys=True)
            key = await client.create_key((32, 32, 3), block=4, seed=1)
            found["disguised"] = await client.encode(images, key=key.name)
            found["defended"] = await client.defend(outputs["outputs"], "argmax")
            with pytest.raises(InstaHideError) as caught:
                await client.encode(images, labels, num_classes=2)  # labels past num_classes: a per-batch error
            found["error"] = caught.value
            started = await client.start_membership_audit(outputs["outputs"], outputs["labels"],
                                                          outputs["member"], attacks=["loss"])
            events = []
            found["audit"] = await client.wait_audit(started.name, progress=events.append, timeout=120)
            found["events"] = events
            found["listed"] = [a.name async for a in client.list_audits()]
            found["key"] = key
        return found

    with launch_server(tmp, "--pool", str(small_pool_path), "--state-dir", str(tmp / "state")) as server:
        found = asyncio.run(scenario(server.target))
        with InstaHideClient(server.target) as sync:
            seeded = sync.encode(images, labels, num_classes=5, seed=3, batch_size=4, return_keys=True)
            disguised = sync.encode(images, key=found["key"].name)
    assert found["health"] == "SERVING" and found["info"]["device"] == "cpu"
    np.testing.assert_array_equal(found["seeded"].encoded, seeded.encoded)  # the same seed, the same keys
    np.testing.assert_array_equal(found["seeded"].mixed_labels, seeded.mixed_labels)
    assert found["seeded"].keys is not None and found["seeded"].seeded
    np.testing.assert_array_equal(found["disguised"].encoded, disguised.encoded)
    assert set(np.unique(found["defended"])) == {0.0, 1.0}
    assert found["error"].code == grpc.StatusCode.INVALID_ARGUMENT and found["error"].field == "labels"
    audit = found["audit"]
    assert audit.state == "succeeded" and list(audit.report.results) == ["loss"]
    assert found["events"][-1].state == "succeeded" and audit.name in found["listed"]
