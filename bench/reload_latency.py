"""Reload latency: time from saving sites.yaml to the proxy routing by the new content.

Starts two small backends and the proxy on loopback, then saves the file N times (alternating
the site between the backends, by rename-over as editors do, or in place with --in-place) and
polls through the proxy every 5 ms until the answer comes from the new backend.

    python bench/reload_latency.py [--saves 50] [--in-place]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web


async def start_backend(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def save(path: Path, text: str, in_place: bool) -> None:
    if in_place:
        path.write_text(text)
        return
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--in-place", action="store_true", help="write the file in place instead of rename-over")
    args = parser.parse_args()

    backends = [await start_backend("A"), await start_backend("B")]
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "sites.yaml"
        config.write_text(f"sites:\n  app1: 127.0.0.1:{backends[0][1]}\n")
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config), "--http", "127.0.0.1:0", "--no-https"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proxy.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proxy.stdout.readline), 15)
            match = re.search(r"listening on (http://\S+)", line)
            if not match:
                raise SystemExit(f"the proxy did not start: {line!r}")
            base = match.group(1)
            latencies: list[float] = []
            async with aiohttp.ClientSession() as client:
                for i in range(1, args.saves + 1):
                    name, port = ("B", backends[1][1]) if i % 2 else ("A", backends[0][1])
                    started = time.perf_counter()
                    save(config, f"sites:\n  app1: 127.0.0.1:{port}\n", args.in_place)
                    deadline = started + 10
                    while True:
                        async with client.get(base, headers={"Host": "app1.localhost"}) as resp:
                            if await resp.text() == name:
                                break
                        if time.perf_counter() > deadline:
                            raise SystemExit(f"save {i}: no reload within 10 s")
                        await asyncio.sleep(0.005)
                    latencies.append(time.perf_counter() - started)
                    await asyncio.sleep(0.3)  # let the next save be a separate edit, as a person makes them
        finally:
            proxy.terminate()
            proxy.wait(10)
            for runner, _ in backends:
                await runner.cleanup()

    ms = sorted(x * 1000 for x in latencies)
    style = "in place" if args.in_place else "rename-over"
    print(
        f"{len(ms)} saves ({style}): median {statistics.median(ms):.0f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, worst {ms[-1]:.0f} ms, best {ms[0]:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
