"""Encode throughput: a reference written like the family's public code vs instahide_ops vs the gRPC transport
ceiling vs the real stream.

In one run, on one machine, with the same batch shape, for ``--family instahide`` (default) or
``--family disguised_nets --method rmt|aes``:
  (a) the reference: for InstaHide numpy written the way the official InstaHide code works
      (per-row rejection loop for the coefficients, a fresh permutation per slot, a
      full-size random sign tensor); for DisguisedNets Python loops over images, blocks
      and channels as the public DisguisedNets code runs them (one matrix product per
      block and channel; for AES one cipher call per 16-byte unit);
  (b) instahide_ops.transforms.instahide.encode in-process on --device;
  (c) a raw-bytes gRPC echo stream carrying the same message sizes (uint8 in, the
      encoded dtype out): the transport ceiling;
  (d) the real TransformService.Encode stream end to end (a real instahide-server process).
Reports images/s (median over --repeats), the ratios b/a and d/c, the shared-CPU bound
1/(1/c + 1/b) (transport and encoding share the cores) with d against it, and for
InstaHide's (b) the effective bandwidth, counted as (k + 1) float32 tensors of the batch's
size per call (k images read, one written). The last line of output is one JSON object.

Usage: python bench/encode.py [--device cpu|cuda] [--batch-size 1024] [--quick]
       python bench/encode.py --family disguised_nets --method rmt|aes [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import signal
import statistics
import sys
import tempfile
import time

import grpc
import numpy as np
import torch
from _process import start_instahide_server, start_process, stop_process
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from instahide_client.instahide.v1 import disguisednets_pb2, instahide_pb2, keys_pb2, keys_pb2_grpc, transform_pb2
from instahide_client.tensors import to_tensor

from instahide_ops.images import unit_range_array
from instahide_ops.transforms.disguisednets import DisguisedNetsKey, DisguisedNetsParams, create_key, disguise
from instahide_ops.transforms.instahide.encode import EncodeParams, encode
from instahide_ops.transforms.instahide.pool import PublicPool

ECHO_METHOD = "/bench.Echo/Stream"
ENCODE_METHOD = "/instahide.v1.TransformService/Encode"
MAX_MESSAGE = 256 * 2**20
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def numpy_reference(images: np.ndarray, pool: np.ndarray, k: int, upper: float = 0.65, dom: float = 0.3) -> np.ndarray:
    """The official cross-mode rule as the reference code computes it (float32, Python row loop)."""
    n = images.shape[0]
    x = images.astype(np.float32) / 127.5 - 1.0
    lams = np.random.normal(0, 1, size=(n, k))
    for i in range(n):
        lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
        while lams[i].max() > upper or lams[i][0] + lams[i][1] < dom:
            lams[i] = np.random.normal(0, 1, size=(1, k))
            lams[i] = np.abs(lams[i]) / np.sum(np.abs(lams[i]))
    lams = lams.astype(np.float32)
    mixed = lams[:, 0, None, None, None] * x
    for slot in range(1, k):
        source = x if slot < 2 else pool
        mixed += lams[:, slot, None, None, None] * source[np.random.permutation(n) % len(source)]
    sign = np.random.randint(2, size=x.shape) * 2.0 - 1
    return (mixed * sign).astype(np.float32)


def disguised_nets_reference(images: np.ndarray, key: DisguisedNetsKey) -> np.ndarray:
    """DisguisedNets as its public code runs it: per image, per block position, per channel, a Python loop; RMT one
    matrix product per block, AES one cipher call per 16-byte unit (one ECB context per key)."""
    n, _, w, c = images.shape
    r, s = key.params.block
    columns = w // s
    out = np.empty(images.shape, np.float32 if key.params.method == "rmt" else np.uint8)
    aes_keys = key.aes_keys if key.aes_keys is not None else []
    ciphers = [Cipher(algorithms.AES(k.tobytes()), modes.ECB()).encryptor() for k in aes_keys]
    for i in range(n):
        for position in range(key.positions):
            y, x = divmod(position, columns)
            ty, tx = divmod(int(key.permutation[position]), columns)
            for channel in range(c):
                block = images[i, y * r:(y + 1) * r, x * s:(x + 1) * s, channel]
                if key.params.method == "rmt":
                    matrix = key.matrices[position, channel if key.params.matrix_per_channel else 0]
                    disguised = block.astype(np.float64) @ matrix
                else:
                    cipher = ciphers[position if key.params.aes_key_per_block else 0]
                    raw = block.tobytes()
                    disguised = np.frombuffer(b"".join(cipher.update(raw[u:u + 16]) for u in range(0, len(raw), 16)),
                                              np.uint8).reshape(r, s)
                out[i, ty * r:(ty + 1) * r, tx * s:(tx + 1) * s, channel] = disguised
    return out


def timed(fn, repeats: int, items: int) -> float:
    """Median items/s of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


# --- (c) the echo server: raw bytes in, a fixed-size bytes reply out -------------------------------

async def _serve_echo(port_file: str, reply_bytes: int) -> None:
    reply = bytes(reply_bytes)

    async def stream(request_iterator, context):
        async for _ in request_iterator:
            yield reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pathlib.Path(port_file).write_text(str(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def stream_rate(call, requests: list[bytes], repeats: int, images_per_request: int) -> tuple[float, bytes]:
    """Median images/s of sending ``requests`` on one stream and reading every reply, and the last reply.

    Requests and replies stay raw bytes on the client for both streams, so the two runs differ
    only in what the server does.
    """
    replies: list[bytes] = []

    def run() -> None:
        replies[:] = list(call(iter(requests)))
        assert len(replies) == len(requests), f"got {len(replies)} replies for {len(requests)} requests"

    return timed(run, repeats, images_per_request * len(requests)), replies[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per message / per call")
    parser.add_argument("--large-batch", type=int, default=None, help="batch for the in-process bandwidth figure")
    parser.add_argument("--messages", type=int, default=32, help="messages per stream run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float16", help="encoded output dtype")
    parser.add_argument("--family", choices=["instahide", "disguised_nets"], default="instahide")
    parser.add_argument("--method", choices=["rmt", "aes"], default="rmt", help="DisguisedNets: the key's method")
    parser.add_argument("--reference-batch", type=int, default=128,
                        help="DisguisedNets: images per call of the (slow) Python-loop reference")
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument("--serve-echo", nargs=2, metavar=("PORT_FILE", "REPLY_BYTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        asyncio.run(_serve_echo(args.serve_echo[0], int(args.serve_echo[1])))
        return
    if args.quick:
        args.messages, args.repeats = 8, 3
    if args.family == "disguised_nets":
        disguised_nets_main(args)
        return

    n, shape, k = args.batch_size, (32, 32, 3), args.k
    out_dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    pool_array = rng.integers(0, 256, size=(4096, *shape), dtype=np.uint8)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results: dict = {
        "benchmark": "encode", "device": str(device), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "batch_size": n, "image_shape": list(shape), "k": k, "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }

    # (a) numpy reference
    pool_float = unit_range_array(pool_array)
    results["numpy_reference_images_per_s"] = timed(
        lambda: numpy_reference(images, pool_float, k), args.repeats, n)

    # (b) instahide_ops in-process
    pool = PublicPool.from_array(pool_array, device=device)
    params = EncodeParams(k=k)
    for batch, key in [(n, "ops_images_per_s"), (args.large_batch, "ops_large_batch_images_per_s")]:
        if not batch:
            continue
        x = torch.from_numpy(np.resize(images, (batch, *shape))).to(device)
        y = torch.from_numpy(np.resize(labels, batch)).to(device)

        def run(x=x, y=y) -> None:
            encode(x, y, num_classes=10, params=params, pool=pool, out_dtype=out_dtype)
            sync()

        results[key] = timed(run, args.repeats, batch)
        results[key.replace("images_per_s", "effective_bytes_per_s")] = results[key] * (k + 1) * 4 * np.prod(shape)
    results["ops_vs_numpy"] = results["ops_images_per_s"] / results["numpy_reference_images_per_s"]

    # (c) echo ceiling and (d) the real stream, with the same request and reply sizes
    request = transform_pb2.EncodeRequest(
        request_id="0", images=to_tensor(images), labels=labels.tolist(),
        config=transform_pb2.EncodeConfig(
            output_dtype={"float32": 3, "float16": 2}[args.dtype],
            instahide=instahide_pb2.InstaHideConfig(k=k, num_classes=10),
        ),
    )
    raw = [request.SerializeToString()] * args.messages
    reply_bytes = len(transform_pb2.EncodeResponse(
        request_id="0",
        encoded=to_tensor(np.zeros((n, *shape), np.float16 if args.dtype == "float16" else np.float32)),
        labels=to_tensor(np.zeros((n, 10), np.float32)),
    ).SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        echo, echo_target = start_process(
            [sys.executable, __file__, "--serve-echo", str(tmp_path / "echo.port"), str(reply_bytes)],
            tmp_path / "echo.port", tmp_path / "echo.log")
        try:
            with grpc.insecure_channel(echo_target, options=CHANNEL_OPTIONS) as channel:
                rate, _ = stream_rate(channel.stream_stream(ECHO_METHOD), raw, args.repeats, n)
                results["echo_images_per_s"] = rate
        finally:
            stop_process(echo)
        np.save(tmp_path / "pool.npy", pool_array)
        server, target = start_instahide_server(tmp_path, "--device", str(device), "--pool", str(tmp_path / "pool.npy"),
                                                "--log-level", "WARNING")
        try:
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
                rate, last = stream_rate(channel.stream_stream(ENCODE_METHOD), raw, args.repeats, n)
            reply = transform_pb2.EncodeResponse.FromString(last)
            assert not reply.HasField("error") and list(reply.encoded.shape) == [n, *shape], reply.error
            results["encode_stream_images_per_s"] = rate
        finally:
            stop_process(server)
    report(results)


def report(results: dict) -> None:
    """Add the stream's ratios, print every figure, then the JSON line."""
    results["stream_vs_echo"] = results["encode_stream_images_per_s"] / results["echo_images_per_s"]
    bound = 1 / (1 / results["echo_images_per_s"] + 1 / results["ops_images_per_s"])
    results["shared_cpu_bound_images_per_s"] = bound
    results["stream_vs_shared_cpu_bound"] = results["encode_stream_images_per_s"] / bound
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:40s} {value:,.3f}" if value < 100 else f"{key:40s} {value:,.0f}")
    print(json.dumps(results))


def disguised_nets_main(args: argparse.Namespace) -> None:
    """The four figures for a DisguisedNets key (seeded, so every part disguises with the same one)."""
    n, shape = args.batch_size, (32, 32, 3)
    out_dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = DisguisedNetsParams(method=args.method)
    seed = 1234
    key = create_key(params, shape, seed=seed)
    results: dict = {
        "benchmark": "encode", "family": "disguised_nets", "method": args.method, "block": list(params.block),
        "device": str(device), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "batch_size": n, "image_shape": list(shape), "dtype": args.dtype if args.method == "rmt" else "uint8",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    small = images[:args.reference_batch]
    reference = disguised_nets_reference(small, key)
    ours = disguise(torch.from_numpy(small), key).numpy()
    if args.method == "aes":
        assert np.array_equal(reference, ours), "the reference and instahide_ops disagree"
    else:
        np.testing.assert_allclose(reference, ours, rtol=0, atol=1e-2)
    results["reference_images_per_s"] = timed(lambda: disguised_nets_reference(small, key), args.repeats, len(small))

    x = torch.from_numpy(images).to(device)

    def run() -> None:
        encoded = disguise(x, key)
        if encoded.is_floating_point():
            encoded.to(out_dtype)
        sync()

    results["ops_images_per_s"] = timed(run, args.repeats, n)
    results["ops_vs_reference"] = results["ops_images_per_s"] / results["reference_images_per_s"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        server, target = start_instahide_server(tmp_path, "--device", str(device), "--log-level", "WARNING",
                                                "--state-dir", str(tmp_path / "state"), "--warm-shapes", "none",
                                                "--metrics-port", "0")
        try:
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
                created = keys_pb2_grpc.KeyServiceStub(channel).CreateKey(keys_pb2.CreateKeyRequest(
                    disguised_nets=disguisednets_pb2.DisguisedNetsParams(
                        method={"rmt": 1, "aes": 2}[args.method]), image_shape=shape, seed=seed)).key
                assert created.fingerprint == key.fingerprint(), "the server's seeded key differs from ours"
                request = transform_pb2.EncodeRequest(
                    request_id="0", images=to_tensor(images), labels=rng.integers(0, 10, n).tolist(),
                    config=transform_pb2.EncodeConfig(
                        output_dtype={"float32": 3, "float16": 2}[args.dtype],
                        disguised_nets=disguisednets_pb2.DisguisedNetsConfig(key=created.name)))
                raw = [request.SerializeToString()] * args.messages
                rate, last = stream_rate(channel.stream_stream(ENCODE_METHOD), raw, args.repeats, n)
            reply = transform_pb2.EncodeResponse.FromString(last)
            assert not reply.HasField("error") and list(reply.encoded.shape) == [n, *shape], reply.error
            reply_bytes = len(last)  # the echo answers with as many bytes
            results["encode_stream_images_per_s"] = rate
        finally:
            stop_process(server)
        echo, echo_target = start_process(
            [sys.executable, __file__, "--serve-echo", str(tmp_path / "echo.port"), str(reply_bytes)],
            tmp_path / "echo.port", tmp_path / "echo.log")
        try:
            with grpc.insecure_channel(echo_target, options=CHANNEL_OPTIONS) as channel:
                results["echo_images_per_s"], _ = stream_rate(channel.stream_stream(ECHO_METHOD), raw, args.repeats, n)
        finally:
            stop_process(echo)
    report(results)


if __name__ == "__main__":
    main()
