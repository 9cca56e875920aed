"""TLS handshake cost: a first visit to a new host (the leaf is minted in the handshake) against
a repeat visit (the leaf comes from the cache).

Starts the proxy with a fresh CA in a temporary folder, then for N new names handshakes once
(first visit) and once more (repeat), timing TCP connect + TLS handshake with Python's ssl and
only the local CA as trust root.

    python bench/tls_handshake.py [--names 200]
"""

from __future__ import annotations

import argparse
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def handshake(port: int, name: str, context: ssl.SSLContext) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, context.wrap_socket(sock, server_hostname=name):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "sites.yaml"
        config.write_text('sites:\n  "*.bench.localhost": 9\n')
        certs = Path(folder) / "certs"
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config), "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--certs", str(certs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proxy.stdout is not None
            port = None
            for _ in range(10):
                match = re.search(r"listening on https://127\.0\.0\.1:(\d+)", proxy.stdout.readline())
                if match:
                    port = int(match.group(1))
                    break
            if port is None:
                raise SystemExit("the proxy did not start an HTTPS listener")
            context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            handshake(port, "warmup.bench.localhost", context)
            first, repeat = [], []
            for i in range(args.names):
                name = f"n{i}.bench.localhost"
                first.append(handshake(port, name, context))
                repeat.append(handshake(port, name, context))
        finally:
            proxy.terminate()
            proxy.wait(10)

    def summary(samples: list[float]) -> str:
        ms = sorted(s * 1000 for s in samples)
        return f"median {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.2f} ms, worst {ms[-1]:.2f} ms"

    print(f"{args.names} new names, connect + TLS handshake, Python ssl client verifying against the local CA")
    print(f"  first visit (leaf minted in the handshake): {summary(first)}")
    print(f"  repeat visit (leaf from the cache):         {summary(repeat)}")
    print(f"  minting adds (median difference):           {statistics.median(f - r for f, r in zip(first, repeat)) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
