"""An unusable or full state directory: audit and key calls answer UNAVAILABLE saying why; InstaHide encoding goes
on."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from instahide_client.instahide.v1 import audit_pb2, keys_pb2, keys_pb2_grpc
from server_testlib import channel, config, encode_all, encoded, images, request, start_server
from test_audit_service import audits, code_of, get, run_to_end, start_long, start_small, wait_running

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
TRANSFORM, AUDIT, KEYS = "instahide.v1.TransformService", "instahide.v1.AuditService", "instahide.v1.KeyService"
SOME_ID = "audits/" + "0" * 32


def health(target: str) -> dict[str, int]:
    with channel(target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        return {service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                for service in ("", TRANSFORM, AUDIT, KEYS)}


def encodes(target: str) -> bool:
    responses = encode_all(target, [request("a", images(8), cfg=config()), request("b", images(5))])
    return [r.request_id for r in responses] == ["a", "b"] and encoded(responses[1]).shape == (5, 32, 32, 3)


def _not_a_folder(tmp_path):
    path = tmp_path / "state-file"
    path.write_text("not a folder")
    return path


def _read_only(tmp_path):
    """A folder nobody may write in: mode 555, and for root (who ignores modes) the immutable attribute."""
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root writes to read-only folders, and chattr +i is not available here")
    return path


def _writable_again(path: pathlib.Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


@pytest.mark.parametrize("make_state_dir", [_not_a_folder, _read_only])
def test_an_unusable_state_dir_disables_audits_and_the_encoder_keeps_serving(tmp_path, small_pool_path,
                                                                              make_state_dir):
    state = make_state_dir(tmp_path)
    try:
        with start_server(tmp_path, "--pool", str(small_pool_path), "--state-dir", str(state)) as server, \
                audits(server.target) as stub:
            assert health(server.target) == {"": SERVING, TRANSFORM: SERVING, AUDIT: NOT_SERVING, KEYS: NOT_SERVING}
            assert encodes(server.target)
            calls = [
                lambda: start_small(stub),
                lambda: stub.GetAudit(audit_pb2.GetAuditRequest(name=SOME_ID), timeout=10),
                lambda: stub.ListAudits(audit_pb2.ListAuditsRequest(), timeout=10),
                lambda: list(stub.WatchAudit(audit_pb2.WatchAuditRequest(name=SOME_ID), timeout=10)),
                lambda: stub.CancelAudit(audit_pb2.CancelAuditRequest(name=SOME_ID), timeout=10),
                lambda: stub.DeleteAudit(audit_pb2.DeleteAuditRequest(name=SOME_ID), timeout=10),
            ]
            for call in calls:
                code, details = code_of(call)
                assert code == grpc.StatusCode.UNAVAILABLE, details
                assert details.startswith("audits are unavailable on this server: --state-dir " + str(state))
                assert "encoding is unaffected" in details
            with channel(server.target) as chan:
                code, details = code_of(lambda: keys_pb2_grpc.KeyServiceStub(chan).CreateKey(
                    keys_pb2.CreateKeyRequest(disguised_nets={}, image_shape=[32, 32, 3]), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("keys are unavailable on this server")
            assert str(state) in details
            assert encodes(server.target)  # still, after the refusals
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0
    finally:
        if state.is_dir():
            _writable_again(state)
    log = server.log()
    assert "AUDITS DISABLED" in log and str(state) in log and "Traceback" not in log


def test_a_full_audit_database_refuses_new_audits_and_the_rest_keeps_working(tmp_path, small_pool_path):
    """A full state directory: ``--audit-db-max-bytes 1`` caps the database at its size after start-up.

    A write that needs one more page then fails with SQLite's SQLITE_FULL, "database or disk is full",
    the same error (and the same code path in the server) as a disk with no space left. A real full
    filesystem needs root to mount, and making the folder read-only after start changes nothing for a
    database the server already holds open, so this is the honest way to get there unprivileged.
    """
    state = tmp_path / "state"
    args = ("--pool", str(small_pool_path), "--state-dir", str(state), "--audit-db-max-bytes", "1",
            "--audit-workers", "1", "--audit-queue-size", "1000")
    with start_server(tmp_path, *args) as server, audits(server.target) as stub:
        # An audit runs, but its report does not fit: it ends FAILED saying so, for watchers and readers alike.
        ended = run_to_end(stub, start_small(stub))
        assert ended.state == audit_pb2.AUDIT_STATE_FAILED and not ended.HasField("report")
        assert ended.error.startswith(f"report not saved: the audit database {state / 'instahide.db'}")
        assert "database or disk is full" in ended.error

        # Queue audits (behind one that holds the worker) until the database has no room for another row.
        holder = start_long(stub)
        wait_running(stub, holder.name)
        queued = []
        for _ in range(500):
            try:
                queued.append(start_small(stub, 4))
            except grpc.RpcError as exc:
                refused = exc
                break
        else:
            pytest.fail("500 audits were queued into a database that may not grow")
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert str(state / "instahide.db") in refused.details() and "database or disk is full" in refused.details()

        # Everything else goes on: encoding, health, reading what is stored, cancelling.
        assert encodes(server.target)
        assert health(server.target) == {"": SERVING, TRANSFORM: SERVING, AUDIT: SERVING, KEYS: SERVING}
        assert get(stub, ended.name) == ended
        listed = {a.name for a in stub.ListAudits(audit_pb2.ListAuditsRequest(page_size=1000), timeout=30).audits}
        assert {ended.name, holder.name, *(a.name for a in queued)} <= listed
        cancelled = stub.CancelAudit(audit_pb2.CancelAuditRequest(name=holder.name), timeout=60).audit
        assert cancelled.state == audit_pb2.AUDIT_STATE_CANCELLED
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    assert "Traceback" not in server.log()
