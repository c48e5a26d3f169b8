"""The API definition: buf lint is clean and the committed stubs match a fresh generation."""

from __future__ import annotations

import filecmp
import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STUBS = REPO / "client" / "instahide_client" / "instahide"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_stubs", REPO / "client" / "tools" / "generate_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    written = _load_generator().generate(tmp_path)
    assert written, "no stubs generated"
    fresh = tmp_path / "instahide"
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed_files = sorted(
        p.relative_to(STUBS) for p in STUBS.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed_files, "stub files added or removed: run `make protos`"
    stale = [str(p) for p in fresh_files if not filecmp.cmp(fresh / p, STUBS / p, shallow=False)]
    assert not stale, f"committed stubs differ from protos/: {stale}; run `make protos`"


def test_buf_lint_is_clean():
    buf = shutil.which("buf") or str(pathlib.Path(sys.executable).parent / "buf")
    if not pathlib.Path(buf).exists():
        pytest.fail("buf is not installed (requirements-dev.txt installs buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_and_name_the_service():
    from instahide_client.instahide.v1 import transform_pb2

    service = transform_pb2.DESCRIPTOR.services_by_name["TransformService"]
    assert service.full_name == "instahide.v1.TransformService"
    assert service.methods_by_name["Encode"].client_streaming
    assert service.methods_by_name["Encode"].server_streaming
