"""Load: M concurrent Encode streams for T seconds, then a flood; exactly-once, in order, bounded memory.

One run, against one server (started here unless --target is given):
  (1) load: --clients threads, each one Encode stream on its own channel, keeping --in-flight batches
      outstanding (as InstaHideClient does) for --warmup + --seconds. Every request carries a request
      id (client, sequence number) and a batch size that depends on the sequence number, so a response
      matched to the wrong request is caught by its id and by its shape. Each stream checks that every
      batch came back exactly once and in order; latency is send → response per batch; throughput,
      p50/p99 and errors (by status code) are counted after the warm-up.
  (2) flood (--flood-seconds, 0 skips it): --flood-clients streams whose producers never wait: each
      pushes requests as fast as gRPC takes them and reads nothing until the phase ends, then reads
      every answer (and checks them as above). Backpressure should keep the server's memory flat.
Server RSS (VmRSS of /proc/PID/status) is sampled every --rss-interval through both phases, and, when
the server's /metrics is reachable, its ``instahide_encode_batches_in_flight`` gauge. Reports RSS at
the end of the warm-up, at the end and its max, growth in percent, and the sample series. The last
line of output is one JSON object. Exits 1 when a batch was lost, reordered, duplicated or mismatched,
or a call ended INTERNAL.

Usage: python bench/load.py [--clients 8] [--seconds 30] [--device cpu|cuda] [--server-flags '...'] [--quick]
       python bench/load.py --target HOST:PORT [--server-pid PID] [--metrics-url URL]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import numpy as np
from _process import rss_mib, start_instahide_server, stop_process
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2, transform_pb2_grpc
from instahide_client.tensors import to_tensor

MAX_MESSAGE = 64 * 2**20
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
SIZE_STEPS = 8  # request i carries batch_size + i % SIZE_STEPS images
GAUGE = "instahide_encode_batches_in_flight"


@dataclass
class StreamLog:
    """What one stream sent and got back, and how it ended."""

    sent: list[tuple[int, float]] = field(default_factory=list)  # (sequence number, send time)
    received: list[tuple[int, float, int]] = field(default_factory=list)  # (sequence number, time, images)
    mismatched: int = 0  # responses whose shape is not their request's
    unknown: int = 0  # responses whose id this stream never sent
    errors: collections.Counter = field(default_factory=collections.Counter)  # status code name -> count

    def check(self) -> dict[str, int]:
        """Exactly-once and in-order counts: lost, duplicated, reordered (arrived after a later one)."""
        sent = {seq for seq, _ in self.sent}
        got = [seq for seq, _, _ in self.received]
        reordered, highest = 0, -1
        for seq in got:
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)
        return {"sent": len(sent), "answered": len(set(got) & sent), "lost": len(sent - set(got)),
                "duplicated": len(got) - len(set(got)), "reordered": reordered, "mismatched": self.mismatched,
                "unknown": self.unknown}


class Requests:
    """Pre-built batches (one per size step), so the client spends its time on the wire, not on pixels."""

    def __init__(self, batch_size: int, *, dtype: str, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.sizes = [batch_size + i for i in range(SIZE_STEPS)]
        self._batches = [(to_tensor(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)),
                          [int(v) for v in rng.integers(0, 10, size=n)]) for n in self.sizes]
        self._config = transform_pb2.EncodeConfig(output_dtype={"float32": 3, "float16": 2}[dtype],
                                                  instahide=instahide_pb2.InstaHideConfig(num_classes=10))

    def make(self, client: int, seq: int) -> transform_pb2.EncodeRequest:
        images, labels = self._batches[seq % SIZE_STEPS]
        request = transform_pb2.EncodeRequest(request_id=f"{client}-{seq}", images=images, labels=labels)
        if seq == 0:
            request.config.CopyFrom(self._config)
        return request

    def size(self, seq: int) -> int:
        return self.sizes[seq % SIZE_STEPS]


def run_stream(target: str, client: int, requests: Requests, log: StreamLog, *, stop: threading.Event,
               window: int | None, read_after: threading.Event | None = None, deadline_s: float = 600) -> None:
    """One Encode stream: send until ``stop`` (at most ``window`` unanswered; None: never wait), read all.

    ``read_after``: read nothing until it is set (the flood's producer that never reads).
    """
    slots = threading.Semaphore(window) if window else None

    def produce():
        seq = 0
        while not stop.is_set():
            if slots is not None:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
            log.sent.append((seq, time.perf_counter()))
            yield requests.make(client, seq)
            seq += 1

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = transform_pb2_grpc.TransformServiceStub(channel).Encode(produce(), timeout=deadline_s)
        if read_after is not None:
            read_after.wait()
        try:
            for response in call:
                now = time.perf_counter()
                if slots is not None:
                    slots.release()
                owner, _, seq_text = response.request_id.partition("-")
                if owner != str(client) or not seq_text.isdigit():
                    log.unknown += 1
                    continue
                seq = int(seq_text)
                if response.HasField("error"):
                    log.errors[_code_name(response.error.code)] += 1
                    continue
                if list(response.encoded.shape) != [requests.size(seq), 32, 32, 3]:
                    log.mismatched += 1
                log.received.append((seq, now, requests.size(seq)))
        except grpc.RpcError as exc:
            log.errors[exc.code().name] += 1


def _code_name(value: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == value), str(value))


class Sampler(threading.Thread):
    """Samples the server's RSS (and its in-flight gauge, when /metrics is given) every ``interval``."""

    def __init__(self, pid: int | None, metrics_url: str | None, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.metrics_url, self.interval = pid, metrics_url, interval
        self.samples: list[tuple[float, float | None, float | None]] = []  # (time, RSS MiB, gauge)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.perf_counter(), rss_mib(self.pid), scrape_gauge(self.metrics_url, GAUGE)))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> list[tuple[float, float | None, float | None]]:
        return [s for s in self.samples if start <= s[0] <= end]


def scrape_gauge(url: str | None, name: str) -> float | None:
    """The value of an unlabelled metric on the server's /metrics; None when unreachable."""
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def scrape_label(url: str | None, name: str, label: str) -> str | None:
    if url is None:
        return None
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + "{") and f'{label}="' in line:
                    return line.split(f'{label}="', 1)[1].split('"', 1)[0]
    except OSError:
        pass
    return None


def rss_summary(samples: list[tuple[float, float | None, float | None]]) -> dict:
    """RSS at the first and last sample of a phase (after its warm-up), max, growth, and the gauge's max."""
    rss = [s[1] for s in samples if s[1] is not None]
    gauge = [s[2] for s in samples if s[2] is not None]
    if not rss:
        return {"rss_start_mib": None, "rss_end_mib": None, "rss_max_mib": None, "rss_growth_pct": None,
                "rss_max_growth_pct": None, "batches_in_flight_max": max(gauge) if gauge else None}
    return {"rss_start_mib": round(rss[0], 1), "rss_end_mib": round(rss[-1], 1), "rss_max_mib": round(max(rss), 1),
            "rss_growth_pct": round(100 * (rss[-1] / rss[0] - 1), 2),
            "rss_max_growth_pct": round(100 * (max(rss) / rss[0] - 1), 2),
            "batches_in_flight_max": max(gauge) if gauge else None}


def correctness(logs: list[StreamLog]) -> dict:
    totals = collections.Counter()
    errors = collections.Counter()
    for log in logs:
        totals.update(log.check())
        errors.update(log.errors)
    return {**dict(totals), "errors": dict(errors), "internal": errors.get("INTERNAL", 0)}


def load_phase(target: str, requests: Requests, args: argparse.Namespace, sampler: Sampler) -> dict:
    logs = [StreamLog() for _ in range(args.clients)]
    stop = threading.Event()
    threads = [threading.Thread(target=run_stream, args=(target, i, requests, logs[i]),
                                kwargs={"stop": stop, "window": args.in_flight}, daemon=True)
               for i in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(args.warmup)
    measured_from = time.perf_counter()
    time.sleep(args.seconds)
    measured_to = time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join()
    latencies, images, batches = [], 0, 0
    for log in logs:
        sent_at = dict(log.sent)
        for seq, at, n in log.received:
            if measured_from <= at <= measured_to:
                latencies.append(1000 * (at - sent_at[seq]))
                images += n
                batches += 1
    window = measured_to - measured_from
    return {"clients": args.clients, "seconds": args.seconds, "warmup_seconds": args.warmup,
            "in_flight": args.in_flight, "batches": batches, "images": images,
            "batches_per_s": round(batches / window, 2), "images_per_s": round(images / window, 1),
            "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
            **correctness(logs), **rss_summary(sampler.window(measured_from, measured_to)),
            "rss_series_mib": _series(sampler.window(start, measured_to), start)}


def flood_phase(target: str, requests: Requests, args: argparse.Namespace, sampler: Sampler) -> dict:
    logs = [StreamLog() for _ in range(args.flood_clients)]
    stop, read = threading.Event(), threading.Event()
    threads = [threading.Thread(target=run_stream, args=(target, i, requests, logs[i]),
                                kwargs={"stop": stop, "window": None, "read_after": read}, daemon=True)
               for i in range(args.flood_clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    warm = min(2.0, args.flood_seconds / 3)  # the windows fill in the first moments
    time.sleep(warm)
    measured_from = time.perf_counter()
    time.sleep(args.flood_seconds - warm)
    measured_to = time.perf_counter()
    pushed = sum(len(log.sent) for log in logs)  # requests gRPC took while nothing was read
    stop.set()
    read.set()
    for thread in threads:
        thread.join()
    return {"clients": args.flood_clients, "seconds": args.flood_seconds, "pushed_while_unread": pushed,
            **correctness(logs), **rss_summary(sampler.window(measured_from, measured_to)),
            "rss_series_mib": _series(sampler.window(start, measured_to), start)}


def _series(samples: list[tuple[float, float | None, float | None]], start: float) -> list[list[float]]:
    """[seconds since the phase started, RSS MiB] pairs, at most ~60 of them."""
    step = max(1, len(samples) // 60)
    return [[round(t - start, 1), round(r, 1)] for t, r, _ in samples[::step] if r is not None]


def start_server(tmp: pathlib.Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str, str]:
    """A real instahide-server on loopback, with /metrics on a free port; returns it, its target and URL."""
    pool = tmp / "pool.npy"
    np.save(pool, np.random.default_rng(1).integers(0, 256, size=(4096, 32, 32, 3), dtype=np.uint8))
    metrics_file = tmp / "metrics-port"
    proc, target = start_instahide_server(
        tmp, "--device", args.device, "--pool", str(pool), "--state-dir", str(tmp / "state"), "--metrics-port", "0",
        "--metrics-port-file", str(metrics_file), "--log-level", "WARNING",
        "--max-in-flight-per-stream", str(args.server_in_flight), *shlex.split(args.server_flags))
    return proc, target, f"http://127.0.0.1:{int(metrics_file.read_text())}/metrics"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent streams in the load phase")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds of the load phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--batch-size", type=int, default=64, help=f"images per request (+ i % {SIZE_STEPS})")
    parser.add_argument("--in-flight", type=int, default=4, help="unanswered batches per load stream")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16", help="encoded output dtype")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="flood phase length; 0 skips it")
    parser.add_argument("--flood-clients", type=int, default=None, help="flood streams (default: --clients)")
    parser.add_argument("--rss-interval", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda, cuda:N, auto)")
    parser.add_argument("--server-in-flight", type=int, default=4, help="the server's --max-in-flight-per-stream")
    parser.add_argument("--server-flags", default="", help="more flags for the server this starts, e.g. "
                                                           "'--stream-window-bytes 0'")
    parser.add_argument("--target", help="an already running server (then RSS needs --server-pid)")
    parser.add_argument("--server-pid", type=int, help="with --target: the server's pid, for its RSS")
    parser.add_argument("--metrics-url", help="with --target: its /metrics URL, for the in-flight gauge")
    parser.add_argument("--quick", action="store_true", help="4 clients × 5 s, 2 s warm-up, 4 s flood")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.warmup, args.flood_seconds, args.rss_interval = 4, 5.0, 2.0, 4.0, 0.25
    args.flood_clients = args.flood_clients or args.clients

    requests = Requests(args.batch_size, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp_name:
        server = None
        if args.target:
            target, pid, metrics_url = args.target, args.server_pid, args.metrics_url
        else:
            server, target, metrics_url = start_server(pathlib.Path(tmp_name), args)
            pid = server.pid
        sampler = Sampler(pid, metrics_url, args.rss_interval)
        try:
            sampler.start()
            load = load_phase(target, requests, args, sampler)
            flood = flood_phase(target, requests, args, sampler) if args.flood_seconds > 0 else None
            device = scrape_label(metrics_url, "instahide_device_info", "device") or args.device
        finally:
            try:
                sampler.stop()
            finally:  # never leave the server this started behind, whatever failed
                if server is not None:
                    stop_process(server)
    results = {
        "benchmark": "load", "date": datetime.date.today().isoformat(), "device": device,
        "gpu": _gpu_name(device), "cpu": platform.machine(), "cores": os.cpu_count(),
        "batch_size": args.batch_size, "dtype": args.dtype, "server_in_flight": args.server_in_flight,
        "server_flags": args.server_flags,
        **load, "flood": flood,
    }
    failures = {key: sum(phase[key] for phase in (load, flood) if phase)
                for key in ("lost", "reordered", "duplicated", "mismatched", "unknown", "internal")}
    results["targets"] = {
        "exactly_once_in_order": not any(failures.values()),
        "no_internal": failures["internal"] == 0,
        "rss_growth_below_10pct": None if load["rss_growth_pct"] is None else load["rss_max_growth_pct"] < 10,
    }
    print(f"load: {args.clients} streams × {args.seconds:g} s: {load['batches_per_s']:.1f} batches/s, "
          f"{load['images_per_s']:,.0f} img/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
          f"lost {load['lost']}, reordered {load['reordered']}, errors {load['errors']}, "
          f"RSS {load['rss_start_mib']} → {load['rss_end_mib']} MiB (max {load['rss_max_mib']})")
    if flood:
        print(f"flood: {flood['clients']} streams × {flood['seconds']:g} s, {flood['pushed_while_unread']} "
              f"requests taken while unread, answered {flood['answered']}/{flood['sent']}, RSS "
              f"{flood['rss_start_mib']} → {flood['rss_end_mib']} MiB (max {flood['rss_max_mib']}), "
              f"in flight at most {flood['batches_in_flight_max']}")
    print(json.dumps(results))
    return 1 if any(failures.values()) else 0


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    sys.exit(main())
