"""InstaHideError: codes from google.rpc integers, message format, pickling."""

from __future__ import annotations

import pickle

import grpc
import pytest
from instahide_client import InstaHideError
from instahide_client.errors import status_code


class TestStatusCode:
    @pytest.mark.parametrize(("value", "code"), [
        (0, grpc.StatusCode.OK),
        (3, grpc.StatusCode.INVALID_ARGUMENT),
        (8, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (14, grpc.StatusCode.UNAVAILABLE),
        (16, grpc.StatusCode.UNAUTHENTICATED),
    ])
    def test_known(self, value, code):
        assert status_code(value) is code

    @pytest.mark.parametrize("value", [-1, 17, 999])
    def test_unknown_value_is_unknown(self, value):
        assert status_code(value) is grpc.StatusCode.UNKNOWN


class TestInstaHideError:
    def test_message_names_code_field_and_request(self):
        err = InstaHideError(grpc.StatusCode.INVALID_ARGUMENT, "labels too long", field="labels",
                             request_id="7")
        assert str(err) == "INVALID_ARGUMENT: labels too long (field labels) [request 7]"
        assert (err.code, err.details, err.field, err.request_id) == (
            grpc.StatusCode.INVALID_ARGUMENT, "labels too long", "labels", "7")

    def test_call_error_message(self):
        err = InstaHideError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        assert str(err) == "UNAVAILABLE: connection refused"
        assert err.field == "" and err.request_id is None

    def test_pickle_round_trip(self):
        err = InstaHideError(grpc.StatusCode.NOT_FOUND, "gone", field="x", request_id="3")
        back = pickle.loads(pickle.dumps(err))
        assert isinstance(back, InstaHideError)
        assert (back.code, back.details, back.field, back.request_id) == (
            err.code, err.details, err.field, err.request_id)

    def test_from_rpc_error(self):
        class FakeCall(grpc.RpcError, grpc.Call):
            def code(self):
                return grpc.StatusCode.DEADLINE_EXCEEDED

            def details(self):
                return "too slow"

            def initial_metadata(self): ...
            def trailing_metadata(self): ...
            def is_active(self): ...
            def time_remaining(self): ...
            def cancel(self): ...
            def add_callback(self, callback): ...

        err = InstaHideError.from_rpc_error(FakeCall())
        assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.details == "too slow"

    def test_from_rpc_error_without_details_uses_grpc_description(self):
        class Bare(grpc.RpcError, grpc.Call):
            def code(self):
                return grpc.StatusCode.NOT_FOUND

            def details(self):
                return None

            def initial_metadata(self): ...
            def trailing_metadata(self): ...
            def is_active(self): ...
            def time_remaining(self): ...
            def cancel(self): ...
            def add_callback(self, callback): ...

        assert str(InstaHideError.from_rpc_error(Bare())) == "NOT_FOUND: not found"
