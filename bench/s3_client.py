"""botocore vs runtime/s3wire.py for the pipeline's single-object requests, side by side.

    .venv/bin/python -m bench.s3_client [--n 200] [--size 3000]

Starts its own weed mini, then times PUT / GET / HEAD / COPY of small objects (a plan, a result,
a tiny segment) through aiobotocore (the client ``runtime.storage`` used for them before) and
through ``runtime.s3wire`` (what it uses now), interleaved in rounds of 20 so both see the same
machine: wall ms and client CPU ms per request, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


async def run(n: int, size: int) -> None:
    from aiobotocore.session import get_session

    from runtime.settings import load_settings
    from runtime.stack import start_servers
    from runtime.storage import Storage, _client_config

    with tempfile.TemporaryDirectory(prefix="videogen-s3bench-") as d:
        base = load_settings(data_dir=Path(d), embedded=True)
        settings, nats, s3 = start_servers(base, fixed_ports=False)
        try:
            async with Storage(settings) as st:
                await st.ensure_bucket()
                boto_kw = st._client_kwargs(settings.s3_endpoint) | {"config": _client_config()}
                async with get_session().create_client("s3", **boto_kw) as cl:
                    b, body = st.bucket, b"x" * size
                    wire = st.wire

                    async def boto_get(k: str) -> bytes:
                        r = await cl.get_object(Bucket=b, Key=k)
                        async with r["Body"] as s:
                            return bytes(await s.read())

                    ops: dict[str, dict[str, Callable[[int], Awaitable[object]]]] = {
                        "PUT": {"botocore": lambda i: cl.put_object(Bucket=b, Key=f"bo/{i}", Body=body,
                                                                   ContentType="application/json"),
                                "s3wire": lambda i: wire.put(b, f"wi/{i}", body, content_type="application/json")},
                        "GET": {"botocore": lambda i: boto_get(f"bo/{i % 20}"),
                                "s3wire": lambda i: wire.get(b, f"wi/{i % 20}")},
                        "HEAD": {"botocore": lambda i: cl.head_object(Bucket=b, Key=f"bo/{i % 20}"),
                                 "s3wire": lambda i: wire.head(b, f"wi/{i % 20}")},
                        "COPY": {"botocore": lambda i: cl.copy_object(Bucket=b, Key=f"bc/{i}",
                                                                      CopySource={"Bucket": b, "Key": f"bo/{i % 20}"}),
                                 "s3wire": lambda i: wire.copy(b, f"wi/{i % 20}", b, f"wc/{i}")},
                    }
                    for side in ("botocore", "s3wire"):  # warm both pools (and create the read keys)
                        for i in range(20):
                            await ops["PUT"][side](i)
                    print(f"{n} requests per op and client, {size}-byte objects, weed mini on loopback, interleaved "
                          "in rounds of 20")
                    print(f"{'op':6s}{'botocore ms':>13s}{'cpu':>7s}{'s3wire ms':>11s}{'cpu':>7s}"
                          f"{'wall ratio':>12s}{'cpu ratio':>11s}")
                    for op, sides in ops.items():
                        wall: dict[str, list[float]] = {"botocore": [], "s3wire": []}
                        cpu: dict[str, list[float]] = {"botocore": [], "s3wire": []}
                        for r in range(n // 20):
                            for side in (("botocore", "s3wire") if r % 2 == 0 else ("s3wire", "botocore")):
                                t, c = time.perf_counter(), time.process_time()
                                for i in range(20):
                                    await sides[side](r * 20 + i)
                                wall[side].append((time.perf_counter() - t) / 20 * 1e3)
                                cpu[side].append((time.process_time() - c) / 20 * 1e3)
                        bw, bc = statistics.median(wall["botocore"]), statistics.median(cpu["botocore"])
                        ww, wc = statistics.median(wall["s3wire"]), statistics.median(cpu["s3wire"])
                        print(f"{op:6s}{bw:13.2f}{bc:7.2f}{ww:11.2f}{wc:7.2f}{ww / bw:11.2f}x{wc / bc:10.2f}x")
        finally:
            s3.stop()
            nats.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="requests per op and client (multiple of 20)")
    ap.add_argument("--size", type=int, default=3000, help="object bytes")
    args = ap.parse_args()
    asyncio.run(run(max(20, args.n // 20 * 20), args.size))


if __name__ == "__main__":
    main()
