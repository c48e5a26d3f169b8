"""Leakage audits end to end over a real instahide-server (CPU, small pool): the Python client and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cv2
import grpc
import numpy as np
import pytest
import torch
from instahide_client import InstaHideClient, InstaHideError
from instahide_client.cli import main
from instahide_client.cli.audit import format_summary

from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.images import unit_range_array
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.challenge import bundled_private_images

UNKNOWN_ID = "0" * 32


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory, small_pool_path, launch_server):
    tmp = tmp_path_factory.mktemp("audit-server")
    with launch_server(tmp, "--pool", str(small_pool_path), "--state-dir", str(tmp / "state")) as proc:
        yield proc


@pytest.fixture(scope="module")
def privates(tmp_path_factory):
    rng = np.random.default_rng(11)
    images, labels = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 5
    path = tmp_path_factory.mktemp("privates") / "privates.npz"
    np.savez(path, images=images, labels=labels)
    return images, labels, path


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def test_python_client_end_to_end(audit_server, privates, tmp_path):
    images, labels, _ = privates
    events = []
    with InstaHideClient(audit_server.target) as client:
        started = client.start_audit(images, labels, k=6, encodings_per_image=3, seed=1, display_name="e2e",
                                     chunk_images=4)
        assert started.state in ("queued", "running") and started.name.startswith("audits/")
        assert started.create_time is not None and started.spec.seed == 1 and started.spec.encodings_per_image == 3
        audit = client.wait_audit(started.id, progress=events.append, timeout=60)
        summary = client.get_audit(started.name, summary_only=True)
        listed = [a.name for a in client.list_audits(state="succeeded")]
        encoded_with = client.encode(images, labels, return_keys=True).keys.pool_fingerprint
        by_name = client.write_audit_report(started.id, tmp_path / "by_name")

    assert audit.state == "succeeded" and audit.error == "" and audit.done
    assert audit.start_time is not None and audit.end_time >= audit.start_time >= audit.create_time
    assert events and events[-1].state == "succeeded"
    assert {e.state for e in events[:-1]} <= {"queued", "running"}
    stages = [e.progress.stage for e in events if e.state == "running"]
    assert "recovery" in stages and "pool_aware" in stages and "key_aware" in stages
    fractions = [e.progress.fraction for e in events]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert started.name in listed

    report = audit.report
    assert (report.images, report.encodings) == (10, 30) and report.device.startswith("cpu")
    # The audit mixed in the pool the server encodes with: the small pool it was started with.
    assert (report.pool_images, report.pool_fingerprint) == (64, encoded_with)
    assert report.grid_png.startswith(b"\x89PNG") and report.seconds > 0
    assert set(report.attacks()) == {"ciphertext_only", "pool_aware", "key_aware"}
    table = format_summary(report).splitlines()
    assert [line.split("  ")[0] for line in table[1:4]] == ["ciphertext-only", "pool-aware", "key-aware bound"]
    for scores in report.attacks().values():
        assert -1.0 <= scores.mean_ssim <= scores.max_ssim <= 1.0
        assert 0.0 <= scores.min_l2 <= scores.mean_l2
        assert 0.0 <= scores.recovered_above_0_8 <= scores.recovered_above_0_5 <= 1.0
        assert sum(count for _, _, count in scores.histogram) == 10
        assert scores.best_ssim.shape == scores.best_match.shape == (10,)
        assert np.all((scores.best_ssim >= -1.0) & (scores.best_ssim <= 1.0))
        assert scores.recovered.ndim == 4 and scores.recovered.shape[1:] == (32, 32, 3)
        assert scores.stage_seconds
    assert summary.report.ciphertext_only.recovered is None and summary.report.grid_png == b""
    assert [result.bound for result in report.results.values()] == [False, False, True]
    assert report.results["key_aware"].title == "key-aware bound" and report.grid_attack in report.results
    assert summary.report.ciphertext_only.max_ssim == report.ciphertext_only.max_ssim

    paths = report.write(tmp_path / "report")
    assert sorted(p.name for p in paths) == ["grid.png", "recoveries.npz", "report.json"]
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["audit"]["name"] == audit.name and data["audit"]["state"] == "succeeded"
    assert (data["pool_images"], data["pool_fingerprint"]) == (64, encoded_with)
    assert data["audit"]["spec"]["display_name"] == "e2e"
    assert data["ciphertext_only"]["max_ssim"] == pytest.approx(report.ciphertext_only.max_ssim)
    assert (tmp_path / "report" / "grid.png").read_bytes() == report.grid_png
    # The client's one-call form reads the audit by id and writes the same folder.
    assert by_name.name == audit.name
    for name in ("grid.png", "report.json"):
        assert (tmp_path / "by_name" / name).read_bytes() == (tmp_path / "report" / name).read_bytes()

    # Anyone can rescore the recoveries from the npz and the originals alone.
    originals = torch.from_numpy(unit_range_array(images))
    with np.load(tmp_path / "report" / "recoveries.npz") as npz:
        for attack in ("ciphertext_only", "pool_aware", "key_aware"):
            recovered = npz[f"{attack}_recovered"]
            assert recovered.dtype == np.float32
            best = npz[f"{attack}_best_match"]
            rescored = ssim(torch.from_numpy(recovered[best]), originals).numpy()
            np.testing.assert_allclose(rescored, npz[f"{attack}_best_ssim"], atol=1e-6, rtol=0)


def test_cli_start_list_get_delete(audit_server, privates, tmp_path, capsys):
    _, _, path = privates
    target = ["--target", audit_server.target]
    report_dir = tmp_path / "report"
    assert main(["audit", "start", *target, "--images", str(path), "--encodings-per-image", "3", "--seed", "2",
                 "--no-key-aware", "--no-pool-aware", "--report-dir", str(report_dir)]) == 0
    out, err = capsys.readouterr()
    name = next(line.split()[1] for line in err.splitlines() if line.startswith("started "))
    assert "succeeded" in err and "100%" in err
    assert "ciphertext-only" in out and "key-aware" not in out and "pool-aware" not in out
    assert "Max_SSIM" in out and "device: cpu" in out and "pool: 64 images (" in out
    assert sorted(p.name for p in report_dir.iterdir()) == ["grid.png", "recoveries.npz", "report.json"]
    data = json.loads((report_dir / "report.json").read_text())
    assert "key_aware" not in data and "pool_aware" not in data
    assert data["audit"]["spec"]["attacks"] == ["ciphertext_only"]

    assert main(["audit", "list", *target]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["name", "state", "created", "images", "strongest_attack", "leakage"]
    (row,) = [row.split() for row in rows[1:] if row.startswith(name)]
    assert row[1] == "succeeded" and row[-3:-1] == ["10", "ciphertext-only"]
    assert float(row[-1]) == pytest.approx(data["ciphertext_only"]["max_ssim"], abs=5e-5)

    again = tmp_path / "again"
    assert main(["audit", "get", name.removeprefix("audits/"), *target, "--report-dir", str(again)]) == 0
    assert "succeeded" in capsys.readouterr().out
    with np.load(again / "recoveries.npz") as a, np.load(report_dir / "recoveries.npz") as b:
        assert a.files == b.files
        np.testing.assert_array_equal(a["ciphertext_only_recovered"], b["ciphertext_only_recovered"])

    assert main(["audit", "delete", name, *target]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {name}"
    assert main(["audit", "get", name, *target]) == 1
    assert "NOT_FOUND" in _one_error_line(capsys.readouterr().err)


def test_cli_cancel_a_running_audit(audit_server, tmp_path, capsys):
    rng = np.random.default_rng(3)
    target = ["--target", audit_server.target]
    with InstaHideClient(audit_server.target) as client:
        audit = client.start_audit(rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), np.arange(200) % 10,
                                   encodings_per_image=20)
        deadline = time.monotonic() + 30
        while client.get_audit(audit.name, summary_only=True).state == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert main(["audit", "cancel", audit.id, *target]) == 0
        assert capsys.readouterr().out.strip() == f"{audit.name} cancelled"
        assert main(["audit", "watch", audit.id, *target, "--quiet"]) == 1
        assert f"error: {audit.name} cancelled" in capsys.readouterr().err
        ended = client.get_audit(audit.name)
        assert ended.state == "cancelled" and ended.report is None and ended.end_time is not None
        assert audit.name in [a.name for a in client.list_audits(state="cancelled")]
        client.delete_audit(audit.name)
        with pytest.raises(InstaHideError) as info:
            client.get_audit(audit.name)
        assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_server_refusal_is_an_instahide_error(audit_server, privates):
    images, labels, _ = privates
    with InstaHideClient(audit_server.target) as client, pytest.raises(InstaHideError) as info:
        client.start_audit(images, labels, mode="inside")
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT and "mode" in info.value.details


@pytest.mark.parametrize("action", ["get", "watch", "cancel", "delete"])
def test_unknown_id_exits_1_with_one_line(audit_server, action):
    proc = subprocess.run([sys.executable, "-m", "instahide_client.cli", "audit", action, UNKNOWN_ID,
                           "--target", audit_server.target], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.startswith("error: NOT_FOUND: ") and UNKNOWN_ID in line
    assert len(proc.stderr.strip().splitlines()) == 1  # no progress bar drawn before the error


# The photo-aware attack: a server that cuts its pool from photos (at a secret seed) plays the attacker who
# holds those photos but not the pool. A pool of 32 fills the 400 public slots of a 20 × 5 audit, so each of
# its images is mixed into about 12 encodings, as the default pool's are on a 100 × 50 audit, and the
# attacker can find it. The pool differs at every start: over 20 pools (in-process, the same images and key
# seed) the photo-aware attack beat the ciphertext-only one by +0.26 to +0.56 in Max_SSIM. (10 × 5 on a
# pool of 16 ranged from -0.02 to +0.38 over 30 pools: too few encodings for a margin to hold.)

PHOTO_POOL_SIZE = 32
PHOTO_AUDIT_IMAGES = 20


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory, launch_server):
    tmp = tmp_path_factory.mktemp("photo-server")
    photos = tmp / "photos"
    photos.mkdir()
    for name, photo in bundled_sources(("china", "flower")).items():
        cv2.imwrite(str(photos / f"{name}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    with launch_server(tmp, "--pool-photos", str(photos), "--pool-size", str(PHOTO_POOL_SIZE),
                       "--state-dir", str(tmp / "state")) as proc:
        yield proc


@pytest.fixture(scope="module")
def natural_privates(tmp_path_factory):
    images, labels = bundled_private_images(PHOTO_AUDIT_IMAGES)
    path = tmp_path_factory.mktemp("natural") / "privates.npz"
    np.savez(path, images=images, labels=labels)
    return path


def test_cli_runs_the_photo_aware_attack_on_a_pool_cut_from_photos(photo_server, natural_privates, tmp_path, capsys):
    target = ["--target", photo_server.target]
    report_dir = tmp_path / "report"
    assert main(["audit", "start", *target, "--images", str(natural_privates), "--encodings-per-image", "5",
                 "--seed", "2", "--no-key-aware", "--no-pool-aware", "--photo-aware",
                 "--report-dir", str(report_dir)]) == 0
    out, err = capsys.readouterr()
    assert "succeeded" in err
    assert "ciphertext-only" in out and "photo-aware" in out and "pool-aware " not in out
    data = json.loads((report_dir / "report.json").read_text())
    assert data["audit"]["spec"]["attacks"] == ["ciphertext_only", "photo_aware"] and "pool_aware" not in data
    assert data["pool_images"] == PHOTO_POOL_SIZE
    photo_aware = data["photo_aware"]
    # It found public images among the photos' windows and ran the pool-aware attack with them ...
    assert {"photo_pool", "public_mix", "recovery"} <= set(photo_aware["stage_seconds"])
    # ... which recovers the private images better than the attacker who holds no photos.
    assert photo_aware["max_ssim"] > data["ciphertext_only"]["max_ssim"] + 0.1
    # ... having found public images in most encodings, which the summary says too.
    assert 0.5 <= photo_aware["public_coverage"] <= 1.0 and "public_coverage" not in data["ciphertext_only"]
    assert f"photo-aware found public images in {photo_aware['public_coverage']:.0%} of the encodings" in out
    assert sum(bucket["count"] for bucket in photo_aware["best_ssim_histogram"]) == PHOTO_AUDIT_IMAGES
    with np.load(report_dir / "recoveries.npz") as npz:
        assert npz["photo_aware_recovered"].shape[1:] == (32, 32, 3)
    assert main(["audit", "list", *target]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[-2] == "photo-aware" and float(row[-1]) == pytest.approx(photo_aware["max_ssim"], abs=5e-5)
    log = photo_server.log()
    assert f"ready: {PHOTO_POOL_SIZE} images" in log and "Traceback" not in log


def test_photo_aware_refusals(photo_server, audit_server, privates):
    images, labels, _ = privates
    with InstaHideClient(photo_server.target) as client, pytest.raises(InstaHideError) as info:
        client.start_audit(images[..., :1], labels, extra_attacks=["photo_aware"])
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith("spec.attacks: photo_aware needs RGB images")
    with InstaHideClient(audit_server.target) as client, pytest.raises(InstaHideError) as info:
        client.start_audit(images, labels, extra_attacks=["photo_aware"])  # its pool was given as images (--pool)
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION and "--pool-photos" in info.value.details


def test_encode_then_audit_the_encodings_it_wrote(audit_server, privates, tmp_path, capsys):
    _, _, path = privates
    encoded = tmp_path / "enc.npz"
    assert main(["encode", "--target", audit_server.target, "--input", str(path), "--output", str(encoded),
                 "--quiet"]) == 0
    assert "encoded" in np.load(encoded).files
    assert main(["audit", "start", "--target", audit_server.target, "--images", str(path), "--encodings",
                 str(encoded), "--detach"]) == 0
    name = capsys.readouterr().out.strip().splitlines()[-1]
    assert name.startswith("audits/")
    with InstaHideClient(audit_server.target) as client:
        audit = client.wait_audit(name, timeout=120)
    assert audit.state == "succeeded" and audit.spec.precomputed_encodings


def test_listing_into_a_closed_pipe_ends_quietly(audit_server):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`| head -1` that already exited)
    try:
        done = subprocess.run([sys.executable, "-m", "instahide_client.cli", "audit", "list", "--target",
                               audit_server.target], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
