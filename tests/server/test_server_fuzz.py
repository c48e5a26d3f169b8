"""Fuzzing one real server process with hypothesis-generated requests (issue 6).

What goes in: Encode streams of well-formed, non-finite and wild requests (any dtype value, shape,
byte length and config field over its wire range, empty messages, many items per stream); raw bytes
(real, truncated, bit-flipped, spliced and random messages) on Encode, every AuditService method and
the health check (on both ports), through generic methods with identity serializers so that malformed protobuf
reaches the server; StartAudit streams with random specs, chunks and server-side dataset names; and
Get/Watch/Cancel/Delete/List calls with random names, page tokens, filters and page sizes.

What must come out: never INTERNAL, UNKNOWN or DATA_LOSS; every error with a message; well-formed
requests encoded correctly; every Encode request answered in order while the stream goes on. At the
end (the last test): at least ``MIN_REQUESTS`` requests were sent, the server is alive, its log holds
no traceback, every audit the fuzzing started ended without an internal error, and a normal request
still gets a correct encoding. Examples are derandomized (fixed seeds, no example database), so a
CI run is reproducible.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fuzz_strategies import (
    FLOAT16,
    FLOAT32,
    INSIDE,
    EncodeCase,
    audit_names,
    chunk_request,
    encode_cases,
    list_requests,
    raw_messages,
    reconstruction_spec,
    start_audit_streams,
    text,
    wild_audit_chunks,
)
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instahide_client.instahide.v1 import audit_pb2, audit_pb2_grpc, instahide_pb2, transform_pb2, transform_pb2_grpc
from instahide_client.tensors import to_numpy, to_tensor
from serverproc import ServerProcess, start_server

MIN_REQUESTS = 10_000  # issue 6: requests per CI run
MAX_MESSAGE_BYTES = 1 << 20
MAX_IMAGES_PER_REQUEST = 64
AUDIT_QUEUE = 2
CALL_TIMEOUT = 60.0

# Fixed seeds and no example database: every run sends the same requests.
REPRODUCIBLE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                        suppress_health_check=list(HealthCheck))


def fuzz(max_examples: int) -> settings:
    return settings(REPRODUCIBLE, max_examples=max_examples)


C = grpc.StatusCode
NEVER = {C.INTERNAL, C.UNKNOWN, C.DATA_LOSS}
INVALID, EXHAUSTED = C.INVALID_ARGUMENT.value[0], C.RESOURCE_EXHAUSTED.value[0]
ENDED = {audit_pb2.AUDIT_STATE_SUCCEEDED, audit_pb2.AUDIT_STATE_FAILED, audit_pb2.AUDIT_STATE_CANCELLED}
INTERNAL_AUDIT_ERROR = "internal error"
TRANSFORM = "/instahide.v1.TransformService/"
AUDIT = "/instahide.v1.AuditService/"
# Status codes each AuditService method may answer with (besides OK).
START_CODES = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.NOT_FOUND, C.PERMISSION_DENIED, C.FAILED_PRECONDITION}
NAMED_CODES = {C.INVALID_ARGUMENT, C.NOT_FOUND}
DELETE_CODES = NAMED_CODES | {C.FAILED_PRECONDITION}
LIST_CODES = {C.INVALID_ARGUMENT}

SENT: collections.Counter[str] = collections.Counter()  # requests the server received, by method


def _identity(data: bytes) -> bytes:
    return data


def _assert_clear(error: grpc.RpcError, allowed: set[grpc.StatusCode], what: str) -> None:
    code, details = error.code(), error.details()
    assert code not in NEVER, f"{what}: {code.name} {details!r}"
    assert code in allowed, f"{what}: unexpected {code.name} {details!r}"
    assert details, f"{what}: {code.name} without a message"


class AuditLedger:
    """The audits the fuzzing started. Each is run to its end (briefly) or cancelled before the next call,
    so the queue never fills and every accepted audit has been played against the attacker or stopped."""

    RUN_SECONDS = 3.0

    def __init__(self, stub: audit_pb2_grpc.AuditServiceStub) -> None:
        self._stub = stub
        self.names: list[str] = []

    def started(self, name: str, *, run: bool) -> None:
        self.names.append(name)
        if run:
            try:
                for _ in self._stub.WatchAudit(audit_pb2.WatchAuditRequest(name=name), timeout=self.RUN_SECONDS):
                    pass
            except grpc.RpcError as exc:
                assert exc.code() == C.DEADLINE_EXCEEDED, exc
            finally:
                SENT["WatchAudit"] += 1
        audit = self._stub.CancelAudit(audit_pb2.CancelAuditRequest(name=name), timeout=CALL_TIMEOUT).audit
        SENT["CancelAudit"] += 1
        assert audit.state in ENDED, audit
        assert INTERNAL_AUDIT_ERROR not in audit.error, f"{name}: {audit.error}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Server-side datasets an audit may name: one good, the rest broken in every way a file can be."""
    root = tmp_path_factory.mktemp("fuzz-data")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "small.npz", images=images, labels=np.arange(4) % 2)
    (root / "empty.npz").write_bytes(b"")
    (root / "zip-magic.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    (root / "text.npz").write_text("images,labels\n")
    with open(root / "pickled.npz", "wb") as file:
        pickle.dump({"images": images}, file)
    np.savez(root / "no-labels.npz", images=images)
    np.savez(root / "zero-size.npz", images=np.zeros((4, 0, 0, 3), np.uint8), labels=np.arange(4))
    np.savez(root / "four-channels.npz", images=np.zeros((4, 8, 8, 4), np.uint8), labels=np.arange(4))
    np.savez(root / "nan.npz", images=np.full((4, 8, 8, 3), np.nan, np.float32), labels=np.arange(4))
    np.save(root / "lone-array.npy", images)
    (root / "lone-array.npy").rename(root / "lone-array.npz")
    np.savez(root / "bad-crc.npz", images=images, labels=np.arange(4))
    damaged = bytearray((root / "bad-crc.npz").read_bytes())
    damaged[damaged.find(b"\x93NUMPY") + 150] ^= 0xFF
    (root / "bad-crc.npz").write_bytes(bytes(damaged))
    (root / "sub").mkdir()
    (root / "link").symlink_to("/etc")
    return root


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, small_pool_path: pathlib.Path,
                data_root: pathlib.Path) -> Iterator[ServerProcess]:
    """One server for the whole module, with small limits so that oversized requests are cheap to send."""
    with start_server(tmp_path_factory.mktemp("fuzz-server"), "--pool", str(small_pool_path),
                      "--data-root", str(data_root), "--warm-shapes", "none", "--workers", "2",
                      "--max-message-bytes", str(MAX_MESSAGE_BYTES),
                      "--max-images-per-request", str(MAX_IMAGES_PER_REQUEST),
                      "--audit-workers", "1", "--audit-queue-size", str(AUDIT_QUEUE), "--audit-max-images", "16",
                      "--audit-timeout-seconds", "5", health_port=True) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    # The client may send more than the server takes, so that oversized messages reach it.
    options = [("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", 16 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(fuzz_server.target, options=options) as chan:
        yield chan


@pytest.fixture(scope="module")
def transform(fuzz_channel: grpc.Channel) -> transform_pb2_grpc.TransformServiceStub:
    return transform_pb2_grpc.TransformServiceStub(fuzz_channel)


@pytest.fixture(scope="module")
def audits(fuzz_channel: grpc.Channel) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(fuzz_channel)


@pytest.fixture(scope="module")
def ledger(audits: audit_pb2_grpc.AuditServiceStub) -> AuditLedger:
    return AuditLedger(audits)


# Encode.

def _check_encoded(case: EncodeCase, response: transform_pb2.EncodeResponse) -> None:
    """Invariants of every successful response; for well-formed cases also what their config asked."""
    request = case.request
    encoded, mixed = to_numpy(response.encoded), to_numpy(response.labels)
    images_shape = list(request.images.shape)
    assert list(encoded.shape) == images_shape
    assert response.encoded.dtype in (FLOAT32, FLOAT16)
    assert np.isfinite(encoded).all() and np.abs(encoded).max() <= 1.001
    assert mixed.shape[0] == images_shape[0] and mixed.dtype == np.float32
    assert np.isfinite(mixed).all() and mixed.min() >= 0 and (mixed.sum(axis=1) <= 1 + 1e-5).all()
    if case.expect != "ok":
        return
    outer, config = request.config, request.config.instahide
    assert response.encoded.dtype == (FLOAT16 if outer.output_dtype == FLOAT16 else FLOAT32)
    assert mixed.shape[1] == config.num_classes
    assert response.HasField("instahide_keys") == config.return_keys
    assert response.seeded == config.HasField("seed")
    if config.mode == INSIDE:
        np.testing.assert_allclose(mixed.sum(axis=1), 1, atol=1e-5)
    else:
        assert (mixed.sum(axis=1) >= 0.3 - 1e-5).all()  # the default min_private_mass
    assert mixed[np.arange(len(mixed)), list(request.labels)].min() > 0  # each image's own class


def _check_encode_response(case: EncodeCase, response: transform_pb2.EncodeResponse) -> None:
    assert response.request_id == case.request.request_id
    if response.HasField("error"):
        error = response.error
        assert case.expect != "ok", f"a well-formed request was refused: {error}"
        assert error.code in ((INVALID,) if case.expect == "invalid" else (INVALID, EXHAUSTED)), error
        assert error.message and error.field, error
        assert not response.HasField("encoded")
    else:
        assert case.expect != "invalid", f"encoded a request that should be refused: {case.request}"
        _check_encoded(case, response)


@fuzz(max_examples=450)
@given(cases=st.lists(encode_cases, min_size=10, max_size=50))
def test_encode_streams_answer_every_request_in_order(transform, cases: list[EncodeCase]):
    call = transform.Encode(iter([case.request for case in cases]), timeout=CALL_TIMEOUT)
    try:
        responses = list(call)
    except grpc.RpcError as exc:
        pytest.fail(f"the stream ended with {exc.code().name} {exc.details()!r}")
    SENT["Encode"] += len(cases)
    assert len(responses) == len(cases)
    for case, response in zip(cases, responses, strict=True):
        _check_encode_response(case, response)


def _parses(message_type, data: bytes) -> bool:
    try:
        message_type.FromString(data)
    except Exception:  # protobuf's DecodeError
        return False
    return True


# One message far over the server's limit: gRPC refuses it with RESOURCE_EXHAUSTED.
OVERSIZED = transform_pb2.EncodeRequest(
    images=to_tensor(np.zeros((1, 1, 1, MAX_MESSAGE_BYTES + 1), np.uint8))).SerializeToString()
raw_encode_messages = st.tuples(st.integers(0, 99), raw_messages(
    encode_cases.map(lambda case: case.request.SerializeToString()))).map(lambda p: OVERSIZED if p[0] == 0 else p[1])


@fuzz(max_examples=250)
@given(messages=st.lists(raw_encode_messages, min_size=1, max_size=8))
def test_encode_raw_bytes_parse_or_end_the_stream_with_invalid_argument(fuzz_channel, messages: list[bytes]):
    """Each message that parses is answered; the first that does not ends the stream, clearly."""
    parsed = 0
    while parsed < len(messages) and len(messages[parsed]) <= MAX_MESSAGE_BYTES \
            and _parses(transform_pb2.EncodeRequest, messages[parsed]):
        parsed += 1
    encode = fuzz_channel.stream_stream(TRANSFORM + "Encode", request_serializer=_identity,
                                        response_deserializer=transform_pb2.EncodeResponse.FromString)
    responses, error = [], None
    try:
        for response in encode(iter(messages), timeout=CALL_TIMEOUT):
            responses.append(response)
    except grpc.RpcError as exc:
        error = exc
    SENT["Encode (raw)"] += parsed + (parsed < len(messages))
    if parsed == len(messages):
        assert error is None, f"{error.code().name} {error.details()!r}"
        assert len(responses) == len(messages)
    elif len(messages[parsed]) > MAX_MESSAGE_BYTES:
        assert error is not None
        _assert_clear(error, {C.RESOURCE_EXHAUSTED}, "an oversized message")
        assert len(responses) <= parsed
    else:
        assert error is not None, "a malformed message was answered"
        _assert_clear(error, {C.INVALID_ARGUMENT}, "a malformed message")
        assert len(responses) == parsed
    for response in responses:
        assert response.HasField("error") or response.HasField("encoded")
        if response.HasField("error"):
            assert response.error.code in (INVALID, EXHAUSTED) and response.error.message


# AuditService.

def _names(ledger: AuditLedger, pick: int | None):
    """A started audit's name when ``pick`` is given and there is one, else None."""
    return ledger.names[pick % len(ledger.names)] if pick is not None and ledger.names else None


named_requests = st.tuples(audit_names, st.one_of(st.none(), st.integers(0, 10**6)))
audit_calls = st.one_of(
    st.tuples(st.just("GetAudit"), named_requests, st.booleans()),
    st.tuples(st.just("WatchAudit"), named_requests),
    st.tuples(st.just("CancelAudit"), named_requests),
    st.tuples(st.just("DeleteAudit"), named_requests),
    st.tuples(st.just("ListAudits"), list_requests()),
)


def _check_list(audits, request: audit_pb2.ListAuditsRequest, response: audit_pb2.ListAuditsResponse) -> None:
    page_size = min(request.page_size or 50, 1000)
    assert len(response.audits) <= page_size
    if request.state:
        assert all(audit.state == request.state for audit in response.audits)
    if response.next_page_token:  # the token it gives must work
        follow = audit_pb2.ListAuditsRequest(page_size=request.page_size, state=request.state,
                                             page_token=response.next_page_token)
        audits.ListAudits(follow, timeout=CALL_TIMEOUT)
        SENT["ListAudits"] += 1


def _call_audit(audits, ledger: AuditLedger, call: tuple) -> None:
    method = call[0]
    if method == "ListAudits":
        request = call[1]
        try:
            _check_list(audits, request, audits.ListAudits(request, timeout=CALL_TIMEOUT))
        except grpc.RpcError as exc:
            _assert_clear(exc, LIST_CODES, f"ListAudits {request}")
        finally:
            SENT[method] += 1
        return
    name, pick = call[1]
    name = _names(ledger, pick) or name
    try:
        if method == "GetAudit":
            audit = audits.GetAudit(audit_pb2.GetAuditRequest(name=name, summary_only=call[2]),
                                    timeout=CALL_TIMEOUT).audit
            assert audit.name == name
        elif method == "WatchAudit":  # every audit has ended by now: its last event at once
            events = list(audits.WatchAudit(audit_pb2.WatchAuditRequest(name=name), timeout=CALL_TIMEOUT))
            assert events and events[-1].state in ENDED
        elif method == "CancelAudit":
            audit = audits.CancelAudit(audit_pb2.CancelAuditRequest(name=name), timeout=CALL_TIMEOUT).audit
            assert audit.name == name and audit.state in ENDED
        else:
            audits.DeleteAudit(audit_pb2.DeleteAuditRequest(name=name), timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        _assert_clear(exc, DELETE_CODES if method == "DeleteAudit" else NAMED_CODES, f"{method} {name!r}")
    finally:
        SENT[method] += 1


@fuzz(max_examples=250)
@given(stream=start_audit_streams, run=st.booleans())
def test_start_audit_accepts_or_refuses_clearly(audits, ledger: AuditLedger, stream, run: bool):
    messages, expect = stream
    try:
        audit = audits.StartAudit(iter(messages), timeout=CALL_TIMEOUT).audit
    except grpc.RpcError as exc:
        allowed = {C.INVALID_ARGUMENT} if expect == "invalid" else START_CODES
        _assert_clear(exc, allowed, f"StartAudit ({expect})")
        assert expect != "ok", f"a well-formed audit was refused: {exc.code().name} {exc.details()!r}"
    else:
        assert expect != "invalid"
        assert audit.state == audit_pb2.AUDIT_STATE_QUEUED and audit.name.startswith("audits/")
        ledger.started(audit.name, run=run)
    finally:
        SENT["StartAudit"] += 1


@fuzz(max_examples=400)
@given(calls=st.lists(audit_calls, min_size=1, max_size=8))
def test_audit_calls_with_random_names_and_pages(audits, ledger: AuditLedger, calls: list[tuple]):
    for call in calls:
        _call_audit(audits, ledger, call)


# Raw bytes on the audit methods and the health check. Each entry: method, request type, what a parsed
# request may be answered with, and a strategy of well-formed requests to start from.
RAW_UNARY = {
    "GetAudit": (audit_pb2.GetAuditRequest, NAMED_CODES, st.builds(audit_pb2.GetAuditRequest, name=audit_names)),
    "CancelAudit": (audit_pb2.CancelAuditRequest, NAMED_CODES,
                    st.builds(audit_pb2.CancelAuditRequest, name=audit_names)),
    "DeleteAudit": (audit_pb2.DeleteAuditRequest, DELETE_CODES,
                    st.builds(audit_pb2.DeleteAuditRequest, name=audit_names)),
    "ListAudits": (audit_pb2.ListAuditsRequest, LIST_CODES, list_requests()),
    "WatchAudit": (audit_pb2.WatchAuditRequest, NAMED_CODES,
                   st.builds(audit_pb2.WatchAuditRequest, name=audit_names)),
    "Check": (health_pb2.HealthCheckRequest, {C.NOT_FOUND},
              st.builds(health_pb2.HealthCheckRequest, service=text)),
}
RAW_UNARY["Check (health port)"] = RAW_UNARY["Check"]


def _raw_call(chan: grpc.Channel, method: str, data: bytes):
    path = "/grpc.health.v1.Health/Check" if method.startswith("Check") else AUDIT + method
    if method == "WatchAudit":
        return list(chan.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)(
            data, timeout=CALL_TIMEOUT))
    return chan.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)(
        data, timeout=CALL_TIMEOUT)


@pytest.fixture(scope="module")
def health_port_channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.health_target) as chan:
        yield chan


@fuzz(max_examples=600)
@given(method=st.sampled_from(sorted(RAW_UNARY)), data=st.data())
def test_audit_and_health_raw_bytes(fuzz_channel, health_port_channel, method: str, data):
    message_type, codes, requests = RAW_UNARY[method]
    payloads = data.draw(st.lists(raw_messages(requests.map(lambda r: r.SerializeToString())), min_size=1,
                                  max_size=4))
    chan = health_port_channel if method == "Check (health port)" else fuzz_channel
    for payload in payloads:
        parses = _parses(message_type, payload)
        try:
            _raw_call(chan, method, payload)
        except grpc.RpcError as exc:
            _assert_clear(exc, codes if parses else {C.INVALID_ARGUMENT}, f"{method} {payload[:200]!r}")
        else:
            assert parses, f"{method} answered OK to bytes that do not parse: {payload[:200]!r}"
        SENT[f"{method} (raw)"] += 1


@fuzz(max_examples=150)
@given(messages=st.lists(raw_messages(wild_audit_chunks().map(lambda m: m.SerializeToString())), max_size=4))
def test_start_audit_raw_bytes(fuzz_channel, ledger: AuditLedger, messages: list[bytes]):
    start = fuzz_channel.stream_unary(AUDIT + "StartAudit", request_serializer=_identity,
                                      response_deserializer=audit_pb2.StartAuditResponse.FromString)
    malformed = not all(_parses(audit_pb2.StartAuditRequest, m) for m in messages)
    try:
        response = start(iter(messages), timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        _assert_clear(exc, {C.INVALID_ARGUMENT} if malformed else START_CODES, "StartAudit (raw)")
    else:
        assert not malformed
        ledger.started(response.audit.name, run=False)
    SENT["StartAudit (raw)"] += 1


# After all of it.

def test_fuzzing_sent_enough_and_left_a_working_server(fuzz_server, transform, audits, ledger: AuditLedger):
    """Runs last: the request count, the server's health, its log and the audits it ran."""
    total = sum(SENT.values())
    print(f"fuzz requests: {total} {dict(sorted(SENT.items()))}; audits started: {len(ledger.names)}")
    assert total >= MIN_REQUESTS, f"only {total} requests were sent (run the whole module): {dict(SENT)}"
    assert fuzz_server.process.poll() is None, "the server process died"

    states, errors = collections.Counter(), collections.Counter()
    for name in ledger.names:
        try:
            audit = audits.GetAudit(audit_pb2.GetAuditRequest(name=name, summary_only=True),
                                    timeout=CALL_TIMEOUT).audit
        except grpc.RpcError as exc:  # deleted by the fuzzing
            _assert_clear(exc, {C.NOT_FOUND}, name)
            continue
        assert audit.state in ENDED and INTERNAL_AUDIT_ERROR not in audit.error, audit
        assert audit.state != audit_pb2.AUDIT_STATE_FAILED or audit.error, name
        states[audit_pb2.AuditState.Name(audit.state)] += 1
        errors[audit.error] += 1
    print(f"audit outcomes: {dict(states)}; errors: {dict(errors)}")
    # How many fuzzed audits finish inside their short watch depends on the machine's speed; one known-good
    # audit, watched to its end, shows the attack path still works after all that. Lean (no pool-aware
    # attack), so that it fits the 5 s limit on a slow box too: with it, it took over 5 s on a 2-core CI run.
    images = np.random.default_rng(2).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    spec = reconstruction_spec(k=4, encodings_per_image=2, seed=1, skipped_attacks=["pool_aware"])
    upload = chunk_request(images=to_tensor(images), labels=[0, 1, 0, 1])
    upload.spec.CopyFrom(spec)
    name = audits.StartAudit(iter([upload]), timeout=CALL_TIMEOUT).audit.name
    for _ in audits.WatchAudit(audit_pb2.WatchAuditRequest(name=name), timeout=CALL_TIMEOUT):
        pass
    final = audits.GetAudit(audit_pb2.GetAuditRequest(name=name, summary_only=True), timeout=CALL_TIMEOUT).audit
    assert final.state == audit_pb2.AUDIT_STATE_SUCCEEDED, final
    assert final.HasField("report") and -1 <= final.report.attacks[0].reconstruction.max_ssim <= 1, final

    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    request = transform_pb2.EncodeRequest(request_id="after", images=to_tensor(batch), labels=[0, 1, 2, 3, 4, 5],
                                          config=transform_pb2.EncodeConfig(
                                              output_dtype=FLOAT16,
                                              instahide=instahide_pb2.InstaHideConfig(num_classes=6)))
    (response,) = transform.Encode(iter([request]), timeout=CALL_TIMEOUT)
    assert not response.HasField("error"), response.error
    encoded = to_numpy(response.encoded)
    assert encoded.shape == batch.shape and encoded.dtype == np.float16 and np.abs(encoded).max() <= 1
    assert encoded.std() > 0.1  # mixed pixels, not zeros
    mixed = to_numpy(response.labels)
    assert mixed.shape == (6, 6) and (mixed[np.arange(6), np.arange(6)] > 0).all()  # each image's own class
    assert ((mixed.sum(axis=1) >= 0.3 - 1e-5) & (mixed.sum(axis=1) <= 1 + 1e-5)).all()  # public mass dropped

    log = fuzz_server.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log, log[log.find("Traceback") - 2000:][:6000]
