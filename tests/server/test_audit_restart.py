"""Audits across server processes: reports survive a restart, interrupted audits are never lost."""

from __future__ import annotations

import signal

from instahide_client.instahide.v1 import audit_pb2
from server_testlib import start_server
from test_audit_service import (
    audits,
    get,
    run_to_end,
    start_long,
    start_small,
    wait_running,
)


def _args(tmp_path, pool) -> tuple[str, ...]:
    return ("--pool", str(pool), "--state-dir", str(tmp_path / "state"), "--audit-workers", "1")


def test_reports_survive_a_restart_and_sigterm_interrupts_running_audits(tmp_path, small_pool_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with start_server(tmp_path / "one", *_args(tmp_path, small_pool_path)) as server, \
            audits(server.target) as stub:
        done = run_to_end(stub, start_small(stub))
        assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED
        running = start_long(stub)
        wait_running(stub, running.name)
        queued = start_small(stub, seed=9)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    assert "Traceback" not in server.log()

    with start_server(tmp_path / "two", *_args(tmp_path, small_pool_path)) as server, \
            audits(server.target) as stub:
        assert get(stub, done.name) == done
        for name in (running.name, queued.name):
            audit = get(stub, name)
            assert audit.state == audit_pb2.AUDIT_STATE_FAILED and audit.error == "interrupted by shutdown", audit
            assert audit.HasField("end_time")


def test_audits_live_when_the_server_is_killed_show_interrupted_by_restart(tmp_path, small_pool_path):
    """kill -9 during an audit: after a restart it is reported interrupted, every other report intact."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with start_server(tmp_path / "one", *_args(tmp_path, small_pool_path)) as server, \
            audits(server.target) as stub:
        done = run_to_end(stub, start_small(stub))
        assert done.state == audit_pb2.AUDIT_STATE_SUCCEEDED and done.report.reconstruction.grid_png
        running = start_long(stub)
        wait_running(stub, running.name)
        queued = start_small(stub)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)

    with start_server(tmp_path / "two", *_args(tmp_path, small_pool_path)) as server, \
            audits(server.target) as stub:
        for name in (running.name, queued.name):
            audit = get(stub, name)
            assert audit.state == audit_pb2.AUDIT_STATE_FAILED and audit.error == "interrupted by restart", audit
        listed = stub.ListAudits(audit_pb2.ListAuditsRequest(state=audit_pb2.AUDIT_STATE_FAILED), timeout=30).audits
        assert {running.name, queued.name} <= {a.name for a in listed}
        assert get(stub, done.name) == done  # the report written before the kill, byte for byte
        assert run_to_end(stub, start_small(stub)).state == audit_pb2.AUDIT_STATE_SUCCEEDED  # still works
