"""The key store and DisguisedNets on the Encode stream, over real server processes on loopback.

Keys are created by the service; tests that need to know the material create them from a seed and rebuild the
same key with instahide_ops (the service draws a seeded key exactly as ``create_key(params, shape, seed=...)``).
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instahide_client import InstaHideClient, InstaHideError
from instahide_client.instahide.v1 import (
    disguisednets_pb2,
    keys_pb2,
    keys_pb2_grpc,
    tensor_pb2,
    transform_pb2,
)
from instahide_client.tensors import to_numpy
from server_testlib import channel, config, encode_all, images, metric, ok, request
from serverproc import run_server, start_server

from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise

SHAPE = (32, 32, 3)


def key_config(name: str, **fields) -> transform_pb2.EncodeConfig:
    return transform_pb2.EncodeConfig(disguised_nets=disguisednets_pb2.DisguisedNetsConfig(key=name), **fields)


def refused(starting, match: str) -> None:
    """The server process (a ``run_server`` / ``start_server`` context) exits at start with ``match`` in its log."""
    with pytest.raises(RuntimeError, match=match), starting:
        pass


def expected(batch: np.ndarray, params: DisguisedNetsParams, seed: int) -> np.ndarray:
    """What a key created from ``seed`` makes of ``batch``, computed here."""
    return disguise(torch.from_numpy(batch), create_key(params, SHAPE, seed=seed)).numpy()


@pytest.fixture(scope="module")
def keys_server(tmp_path_factory, small_pool_path):
    with start_server(tmp_path_factory.mktemp("keys"), "--pool", str(small_pool_path), "--log-level", "DEBUG",
                      "--metrics-port", "0", "--metrics-port-file",
                      str(tmp_path_factory.getbasetemp() / "keys-metrics-port")) as proc:
        yield proc
    assert "Traceback" not in proc.log()


def _metrics_port(tmp_path_factory) -> int:
    return int((tmp_path_factory.getbasetemp() / "keys-metrics-port").read_text())


class TestKeyResources:
    def test_create_get_list_delete(self, keys_server):
        with InstaHideClient(keys_server.target) as client:
            made = [client.create_key(SHAPE, display_name=f"k{i}") for i in range(3)]
            aes = client.create_key(SHAPE, method="aes", block=(4, 8), aes_key_per_block=True)
            assert made[0].name.startswith("keys/") and len({k.name for k in made}) == 3
            assert made[0].params["method"] == "rmt" and made[0].params["block"] == (4, 4)
            assert made[0].params["permute"] and made[0].params["matrix"] == "orthogonal"
            assert aes.params["block"] == (4, 8) and aes.params["aes_key_per_block"] and not aes.seeded
            assert len({k.fingerprint for k in [*made, aes]}) == 4 and len(aes.fingerprint) == 64
            assert client.get_key(made[1].name) == made[1]
            assert client.get_key(made[1].id) == made[1]  # the bare id works too
            listed = [k.name for k in client.list_keys(page_size=2)]  # pages of two, newest first
            assert listed[:4] == [aes.name, made[2].name, made[1].name, made[0].name]
            client.delete_key(made[1].name)
            with pytest.raises(InstaHideError) as caught:
                client.get_key(made[1].name)
            assert caught.value.code is grpc.StatusCode.NOT_FOUND and made[1].name in str(caught.value)
            with pytest.raises(InstaHideError) as caught:
                client.delete_key(made[1].name)
            assert caught.value.code is grpc.StatusCode.NOT_FOUND
            assert made[1].name not in [k.name for k in client.list_keys()]

    @pytest.mark.parametrize("params, shape, code, field", [
        ({"block_rows": 5}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.block_rows"),
        ({"method": 2, "block_rows": 2}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.block_rows"),
        ({"method": 7}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.method"),
        ({"noise": -3}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.noise"),
        ({"method": 2, "salt_pepper": 0.9}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.salt_pepper"),
        ({"scale": 4}, SHAPE, "INVALID_ARGUMENT", "disguised_nets.scale"),
        ({}, (32, 32), "INVALID_ARGUMENT", "image_shape"),
        ({"block_rows": 1}, (8192, 8192, 3), "RESOURCE_EXHAUSTED", "image_shape"),
    ])
    def test_bad_parameters_name_their_field(self, keys_server, params, shape, code, field):
        with channel(keys_server.target) as chan:
            stub = keys_pb2_grpc.KeyServiceStub(chan)
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateKey(keys_pb2.CreateKeyRequest(
                    disguised_nets=disguisednets_pb2.DisguisedNetsParams(**params), image_shape=shape), timeout=30)
        assert caught.value.code().name == code and caught.value.details().startswith(field + ":")

    def test_names_and_page_tokens_that_are_not_ours(self, keys_server):
        with channel(keys_server.target) as chan:
            stub = keys_pb2_grpc.KeyServiceStub(chan)
            for call, message in ((stub.GetKey, keys_pb2.GetKeyRequest(name="audits/x")),
                                  (stub.ListKeys, keys_pb2.ListKeysRequest(page_token="garbage")),
                                  (stub.ImportKey, keys_pb2.ImportKeyRequest(wrapped=b"not a key"))):
                with pytest.raises(grpc.RpcError) as caught:
                    call(message, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()

    def test_a_key_is_described_never_shown(self, keys_server):
        seed = 11
        with InstaHideClient(keys_server.target) as client:
            described = client.create_key(SHAPE, method="aes", seed=seed)
            exported = client.export_key(described.name)[1]
        local = create_key(DisguisedNetsParams(method="aes"), SHAPE, seed=seed)
        assert described.seeded and described.fingerprint == local.fingerprint()
        material = local.aes_keys[0].tobytes()
        assert material not in exported  # sealed
        log = keys_server.log()  # at DEBUG
        kek = (keys_server.log_path.parent / "state" / "key-encryption-key").read_text().strip()
        for secret in (material.hex(), base64.b64encode(material).decode(), repr(local.aes_keys[0].tolist()), kek,
                       base64.b64decode(kek).hex()):
            assert secret not in log


class TestEncodeWithAKey:
    def test_mixed_families_on_one_stream(self, keys_server):
        params = DisguisedNetsParams(noise=0.0)
        with InstaHideClient(keys_server.target) as client:
            rmt = client.create_key(SHAPE, seed=3).name
            aes = client.create_key(SHAPE, method="aes", scale=8, seed=4).name
        batch = images(6, seed=1)
        responses = encode_all(keys_server.target, [
            request("ih", batch, cfg=config()),
            request("rmt", batch, labels=[5, 1, 900, 2, 3, 0], cfg=key_config(rmt)),
            request("rmt-again", batch, labels=[]),  # the stream's last config; labels are optional
            request("aes", batch, labels=[], cfg=key_config(aes, output_dtype=tensor_pb2.DATA_TYPE_FLOAT16)),
            request("half", batch, cfg=key_config(rmt, output_dtype=tensor_pb2.DATA_TYPE_FLOAT16)),
            request("ih-again", batch, cfg=config()),
        ])
        assert [r.request_id for r in responses] == ["ih", "rmt", "rmt-again", "aes", "half", "ih-again"]
        assert to_numpy(ok(responses[0]).labels).shape == (6, 10)
        want = expected(batch, params, 3)
        np.testing.assert_array_equal(to_numpy(ok(responses[1]).encoded), want)
        np.testing.assert_array_equal(to_numpy(responses[1].labels), [5, 1, 900, 2, 3, 0])
        np.testing.assert_array_equal(to_numpy(ok(responses[2]).encoded), want)  # same image, same disguise
        assert len(to_numpy(responses[2].labels)) == 0 and responses[1].seeded
        aes_out = to_numpy(ok(responses[3]).encoded)
        assert aes_out.dtype == np.uint8  # AES answers its bytes whatever output_dtype asks
        np.testing.assert_array_equal(aes_out, expected(batch, DisguisedNetsParams(method="aes", scale=8), 4))
        assert to_numpy(ok(responses[4]).encoded).dtype == np.float16
        assert to_numpy(ok(responses[5]).labels).shape == (6, 10)

    def test_bad_requests_fail_alone_and_the_stream_goes_on(self, keys_server):
        with InstaHideClient(keys_server.target) as client:
            key = client.create_key(SHAPE).name
            doomed = client.create_key(SHAPE).name
            client.delete_key(doomed)
        batch = images(4)
        responses = encode_all(keys_server.target, [
            request("deleted", batch, cfg=key_config(doomed)),
            request("shape", images(4, (28, 28, 1)), cfg=key_config(key)),
            request("labels", batch, labels=[1, 2], cfg=key_config(key)),
            request("negative", batch, labels=[1, -2, 3, 4], cfg=key_config(key)),
            request("no-key", batch, cfg=key_config("")),
            request("bad-name", batch, cfg=key_config("audits/abc")),
            request("good", batch, cfg=key_config(key)),
        ])
        errors = {r.request_id: (r.error.code, r.error.field) for r in responses if r.HasField("error")}
        assert errors == {"deleted": (5, "config.disguised_nets.key"), "shape": (3, "images.shape"),
                          "labels": (3, "labels"), "negative": (3, "labels"),
                          "no-key": (3, "config.disguised_nets.key"), "bad-name": (3, "config.disguised_nets.key")}
        assert "[32, 32, 3]" in next(r for r in responses if r.request_id == "shape").error.message
        assert to_numpy(ok(responses[-1]).encoded).shape == (4, *SHAPE)

    def test_client_encode_with_a_key_batches_and_passes_labels(self, keys_server):
        batch, labels = images(10, seed=5), np.arange(10) * 3
        with InstaHideClient(keys_server.target) as client:
            key = client.create_key(SHAPE, seed=9, noise=0.0, block=8, matrix="gaussian").name
            out = client.encode(batch, labels, key=key, batch_size=3)
            unlabelled = client.encode(batch, key=key, batch_size=4)
        want = expected(batch, DisguisedNetsParams(block=(8, 8), matrix="gaussian"), 9)
        np.testing.assert_allclose(out.encoded, want, rtol=0, atol=0)
        np.testing.assert_array_equal(out.mixed_labels, labels)
        np.testing.assert_array_equal(unlabelled.encoded, out.encoded)
        assert out.seeded and len(unlabelled.mixed_labels) == 0

    def test_metrics_count_images_by_family_and_keys_stored(self, keys_server, tmp_path_factory):
        port = _metrics_port(tmp_path_factory)
        before = metric(port, "instahide_images_encoded_total", family="disguised_nets", mode="aes")
        with InstaHideClient(keys_server.target) as client:
            key = client.create_key(SHAPE, method="aes").name
            stored = metric(port, "instahide_keys_stored", family="disguised_nets")
            client.encode(images(7), key=key)
            client.delete_key(key)
        assert metric(port, "instahide_images_encoded_total", family="disguised_nets", mode="aes") == before + 7
        assert metric(port, "instahide_keys_stored", family="disguised_nets") == stored - 1 >= 0
        assert key.removeprefix("keys/") not in _scrape(port)  # no key ids in labels


def _scrape(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


class TestTheStoreOnDisk:
    def _start(self, tmp_path, state, *extra, name="server"):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        return run_server(["--host", "127.0.0.1", "--port", "0", "--port-file", str(folder / "port"),
                           "--device", "cpu", "--state-dir", str(state), "--warm-shapes", "none", *extra],
                          port_file=folder / "port", log_path=folder / "server.log")

    def test_restart_keeps_keys_and_their_outputs(self, tmp_path):
        state, batch = tmp_path / "state", images(5, seed=2)
        with self._start(tmp_path, state) as server, InstaHideClient(server.target) as client:
            key = client.create_key(SHAPE, method="aes", aes_key_per_block=True)
            first = client.encode(batch, key=key.name).encoded
            assert "created a new key-encryption key" in server.log()
        kek = state / "key-encryption-key"
        assert stat.S_IMODE(kek.stat().st_mode) == 0o600 and len(base64.b64decode(kek.read_text())) == 32
        db = (state / "keys.db").read_bytes()
        assert first.tobytes()[:64] not in db
        with self._start(tmp_path, state, name="again") as server, InstaHideClient(server.target) as client:
            assert client.get_key(key.name) == key
            np.testing.assert_array_equal(client.encode(batch, key=key.name).encoded, first)
            assert "created a new key-encryption key" not in server.log()

    def test_a_wrong_or_missing_kek_refuses_to_start(self, tmp_path):
        state = tmp_path / "state"
        with self._start(tmp_path, state) as server, InstaHideClient(server.target) as client:
            client.create_key(SHAPE)
        kek = state / "key-encryption-key"
        original = kek.read_text()
        kek.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        refused(self._start(tmp_path, state, name="wrong"), "does not open the key store")
        kek.unlink()
        refused(self._start(tmp_path, state, name="missing"), "does not exist: give the file it was created with")
        assert not kek.exists()  # no new KEK made in place of the lost one
        kek.write_text("not base64 at all\n")
        refused(self._start(tmp_path, state, name="garbled"), "expected 32 bytes in base64")
        kek.write_text(original)
        kek.chmod(0o600)
        with self._start(tmp_path, state, name="right"):
            pass

    def test_a_corrupt_store_refuses_to_start_and_an_altered_key_answers_data_loss(self, tmp_path):
        state = tmp_path / "state"
        with self._start(tmp_path, state) as server, InstaHideClient(server.target) as client:
            good = client.create_key(SHAPE).name
            bad = client.create_key(SHAPE).name
        with sqlite3.connect(state / "keys.db") as db:  # flip a byte of one sealed key
            sealed = bytearray(db.execute("SELECT sealed FROM keys WHERE id = ?", (bad[5:],)).fetchone()[0])
            sealed[-1] ^= 1
            db.execute("UPDATE keys SET sealed = ? WHERE id = ?", (bytes(sealed), bad[5:]))
        with self._start(tmp_path, state, name="altered") as server, InstaHideClient(server.target) as client:
            assert f"do not open and will answer DATA_LOSS: {bad}" in server.log()
            assert client.get_key(bad).name == bad  # its description is intact
            with pytest.raises(InstaHideError) as caught:
                client.encode(images(2), key=bad)
            assert caught.value.code is grpc.StatusCode.DATA_LOSS
            assert client.encode(images(2), key=good).encoded.shape == (2, *SHAPE)
        (state / "keys.db").write_bytes(b"this is not a database" * 100)
        for suffix in ("-wal", "-shm"):
            (state / f"keys.db{suffix}").unlink(missing_ok=True)
        refused(self._start(tmp_path, state, name="corrupt"), r"cannot be read .*restore it from a backup")

    def test_replicas_sharing_a_kek_disguise_alike_after_export_and_import(self, tmp_path):
        kek = tmp_path / "shared-kek"
        kek.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        kek.chmod(0o600)
        shared = ("--key-encryption-key-file", str(kek))
        batch = images(4, seed=8)
        with (self._start(tmp_path, tmp_path / "a", *shared, name="a") as a,
              self._start(tmp_path, tmp_path / "b", *shared, name="b") as b,
              self._start(tmp_path, tmp_path / "c", name="c") as c,
              InstaHideClient(a.target) as on_a, InstaHideClient(b.target) as on_b,
              InstaHideClient(c.target) as on_c):
            key = on_a.create_key(SHAPE, noise=0.0)
            described, wrapped = on_a.export_key(key.name)
            assert described == key
            assert on_b.import_key(wrapped) == key
            assert on_b.import_key(wrapped) == key  # again: nothing changes
            np.testing.assert_array_equal(on_a.encode(batch, key=key.name).encoded,
                                          on_b.encode(batch, key=key.name).encoded)
            with pytest.raises(InstaHideError) as caught:
                on_c.import_key(wrapped)
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "does not open under this server's key-encryption key" in str(caught.value)
            tampered = bytearray(wrapped)
            tampered[len(tampered) // 2] ^= 0x40
            with pytest.raises(InstaHideError) as caught:
                on_b.import_key(bytes(tampered))
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
            reference = on_a.encode(batch, key=key.name).encoded
        # A replica that mounts the exported keys imports them at every start (as deploy/k8s does).
        folder = tmp_path / "keys"
        folder.mkdir()
        (folder / "dataset.sealed").write_bytes(wrapped)
        for name in ("d", "d-restarted"):
            with (self._start(tmp_path, tmp_path / "d", *shared, "--key-import-dir", str(folder), name=name) as d,
                  InstaHideClient(d.target) as on_d):
                assert on_d.get_key(key.name) == key
                np.testing.assert_array_equal(on_d.encode(batch, key=key.name).encoded, reference)
        (folder / "other.sealed").write_bytes(bytes(tampered))
        refused(self._start(tmp_path, tmp_path / "d", *shared, "--key-import-dir", str(folder), name="bad-import"),
                r"--key-import-dir: cannot import .*other.sealed")


class TestPrincipals:
    def test_each_principal_sees_only_its_own_keys(self, tmp_path, small_pool_path):
        tokens = tmp_path / "tokens"
        tokens.write_text("# principal token\nalice alice-token-1234\nbob bob-token-5678\n")
        with start_server(tmp_path, "--pool", str(small_pool_path), "--token-file", str(tokens)) as server:
            with (InstaHideClient(server.target, token="alice-token-1234") as alice,
                  InstaHideClient(server.target, token="bob-token-5678") as bob):
                key = alice.create_key(SHAPE)
                bobs = bob.create_key(SHAPE)
                assert [k.name for k in alice.list_keys()] == [key.name]
                assert [k.name for k in bob.list_keys()] == [bobs.name]
                for call in (lambda: bob.get_key(key.name), lambda: bob.delete_key(key.name),
                             lambda: bob.export_key(key.name), lambda: bob.encode(images(2), key=key.name)):
                    with pytest.raises(InstaHideError) as caught:
                        call()
                    assert caught.value.code is grpc.StatusCode.NOT_FOUND
                assert alice.encode(images(2), key=key.name).encoded.shape == (2, *SHAPE)
                assert alice.health() == "SERVING"
            with InstaHideClient(server.target) as anonymous:
                assert anonymous.health() == "SERVING"  # health stays open
                with pytest.raises(InstaHideError) as caught:
                    list(anonymous.list_keys())
                assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
            log = server.log()
        assert "alice-token-1234" not in log and "bob-token-5678" not in log
        assert "auth on, 2 principals" in log

    def test_a_malformed_tokens_file_refuses_to_start(self, tmp_path, small_pool_path):
        tokens = tmp_path / "tokens"
        tokens.write_text("alice one-token\nbob\n")
        refused(start_server(tmp_path, "--token-file", str(tokens)), r"line 2: expected 'principal token'")


_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 0.02, 25.0]))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.integers(0, 3), matrix=st.integers(0, 4), rows=st.integers(0, 20), cols=st.integers(0, 20),
       permute=st.booleans(), noise=_FLOATS, salt_pepper=_FLOATS, scale=st.integers(0, 20),
       per_channel=st.booleans(), per_block=st.booleans(),
       shape=st.lists(st.integers(0, 48), min_size=0, max_size=4))
def test_fuzzed_key_parameters_get_clear_statuses(keys_server, method, matrix, rows, cols, permute, noise,
                                                   salt_pepper, scale, per_channel, per_block, shape):
    params = disguisednets_pb2.DisguisedNetsParams(
        method=method, matrix=matrix, block_rows=rows, block_cols=cols, permute=permute, noise=noise,
        salt_pepper=salt_pepper, scale=scale, matrix_per_channel=per_channel, aes_key_per_block=per_block)
    with channel(keys_server.target) as chan:
        stub = keys_pb2_grpc.KeyServiceStub(chan)
        try:
            key = stub.CreateKey(keys_pb2.CreateKeyRequest(disguised_nets=params, image_shape=shape), timeout=60).key
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), exc
            field = exc.details().split(":")[0]
            assert field == "image_shape" or field.startswith("disguised_nets."), exc.details()
            return
        batch = images(2, shape)
        response = encode_all(keys_server.target, [request("fuzz", batch, cfg=key_config(key.name))])[0]
        assert to_numpy(ok(response).encoded).shape == batch.shape
        stub.DeleteKey(keys_pb2.DeleteKeyRequest(name=key.name), timeout=10)
