"""This proxy against nginx as a reverse proxy and against the backend itself, in one run.

Everything listens on 127.0.0.1 and everything it starts is stopped at the end (Ctrl-C included):

    .venv/bin/python bench/compare.py [--quick] [--reps N] [--out FILE]

A backend that is not the bottleneck (nginx, 1 worker: a 13-byte body, a 1 MiB and a 100 MiB file;
plus a small aiohttp WebSocket echo server), nginx as a reverse proxy in front of it (1 worker,
upstream keepalive, HTTP and HTTPS) and this proxy with its defaults (inspector and access log on,
its log going to a file). Each metric is measured on direct, nginx, proxy in turn, and the whole
round repeated --reps times (default 5). The table shows medians; ratios are medians of the
per-repetition ratios. It is printed and written as Markdown to --out (default bench/results.md).

--quick is a smoke run: 1 repetition, 1-2 s wrk runs, no 100 MiB download.

nginx and wrk come from apt-get when they are missing and this runs as root; otherwise it prints
the command to run and exits 2. (On a machine with systemd, Debian's nginx package also starts
the system's own nginx on port 80; this benchmark does not use it.)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import ipaddress
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # time the checkout's parser, installed or not

from proxy.config.load import parse_config_file_text  # noqa: E402
from proxy.routing.table import RoutingTable  # noqa: E402

HOST = "bench.localhost"  # the site every HTTP request names
WS_HOST = "ws.localhost"
SMALL_BODY = b"Hello, World!"  # 13 bytes, as in TechEmpower's plaintext test
ONE_MIB = 1 << 20
BIG_SIZE = 100 << 20
ENDPOINTS = ("direct", "nginx", "proxy")
APT_COMMAND = "apt-get install nginx wrk"


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    reps: int
    load_seconds: int  # wrk at 50 connections
    short_seconds: int  # wrk at 1 connection and with 1 MiB responses
    big_download: bool
    idle_connections: int
    ws_messages: int
    many_sites: int


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            quick=True, reps=args.reps or 1, load_seconds=2, short_seconds=1, big_download=False, idle_connections=1000, ws_messages=2000, many_sites=10_000
        )
    return Settings(
        quick=False, reps=args.reps or 5, load_seconds=10, short_seconds=4, big_download=True, idle_connections=1000, ws_messages=20_000, many_sites=10_000
    )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ tools


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str


def find_tool(name: str) -> str | None:
    """Return a program's path; nginx lives in /usr/sbin, which is not on every user's PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def ensure_tools() -> Tools:
    """Return nginx and wrk, installing the missing ones with apt-get when running as root."""
    missing = [name for name in ("nginx", "wrk") if find_tool(name) is None]
    if missing and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        print(f"this benchmark needs {' and '.join(missing)}: run `sudo {APT_COMMAND}` (Debian, Ubuntu), then run it again", file=sys.stderr)
        raise SystemExit(2)
    if missing:
        progress(f"installing {' '.join(missing)} with apt-get")
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=environment, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True, env=environment, timeout=600)
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx is None or wrk is None:
        raise BenchError(f"apt-get ran but nginx or wrk is still missing; try `{APT_COMMAND}` by hand")
    return Tools(nginx, wrk)


def raise_open_file_limit() -> None:
    """Let this process hold the idle connections (1000 sockets) and wrk's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# ------------------------------------------------------------------ files


def write_content(folder: Path, big_file: bool) -> None:
    """The files the backend serves: 1 MiB of random bytes and (sparse, so instant) 100 MiB."""
    folder.mkdir()
    (folder / "1m.bin").write_bytes(os.urandom(ONE_MIB))
    if big_file:
        with open(folder / "100m.bin", "wb") as f:
            f.truncate(BIG_SIZE)


def write_self_signed(folder: Path) -> tuple[Path, Path]:
    """Return (cert, key) files of a self-signed EC P-256 certificate for the nginx listeners.

    P-256, like the proxy's own leaves, so both sides do the same handshake work.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.now(UTC)
    names = x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(names, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "nginx-cert.pem", folder / "nginx-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def save_atomically(path: Path, text: str) -> None:
    """Write as editors do: a temporary file renamed over the old one."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


# ------------------------------------------------------------------ processes


@dataclass
class Service:
    """A process this benchmark started, with its output files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def stop(self) -> None:
        """Stop it (and, for nginx, its worker); it runs in its own session, so its group is only ours."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def output_tail(self) -> str:
        text = self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")
        return text[-2000:]


def start_service(stack: ExitStack, name: str, command: list[str], folder: Path, env: dict[str, str] | None = None) -> Service:
    """Start command in its own session with output to files in folder; stopped when stack closes."""
    stdout, stderr = folder / f"{name}.stdout", folder / f"{name}.stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=folder, env=env, start_new_session=True)
    service = Service(name, process, stdout, stderr)
    stack.callback(service.stop)
    return service


def wait_for_port(service: Service, port: int, timeout: float = 15.0) -> None:
    """Return once port on 127.0.0.1 accepts connections; raise if the service exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.process.returncode}:\n{service.output_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{service.name} did not accept connections on 127.0.0.1:{port} within {timeout:g} s:\n{service.output_tail()}")


def wait_for_lines(service: Service, patterns: list[str], timeout: float = 30.0) -> list[re.Match[str]]:
    """Return the first match of each pattern in the service's stdout, polling the file until all appear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = service.stdout.read_text(errors="replace")
        matches = [re.search(pattern, text) for pattern in patterns]
        found = [match for match in matches if match is not None]
        if len(found) == len(patterns):
            return found
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.process.returncode}:\n{service.output_tail()}")
        time.sleep(0.05)
    raise BenchError(f"{service.name} did not print {patterns} within {timeout:g} s:\n{service.output_tail()}")


def free_port() -> int:
    """Return a port nothing listens on right now, for nginx (it cannot listen on port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_pids(pid: int) -> list[int]:
    """Return the pids whose parent is pid, from /proc/*/stat."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def nginx_worker(master: Service, timeout: float = 10.0) -> int:
    """Return the pid of nginx's one worker: the process that serves, and whose memory and CPU count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = child_pids(master.process.pid)
        if len(children) == 1:
            return children[0]
        time.sleep(0.05)
    raise BenchError(f"{master.name}: expected one worker process, found {child_pids(master.process.pid)}")


def rss_bytes(pid: int) -> int:
    """Return a process's resident memory, from /proc/PID/statm."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ nginx


NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    # wrk keeps its connections for the whole run; nginx's default closes them every 1000 requests.
    keepalive_requests 1000000;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{body}
}}
"""

BACKEND_SERVER = """\
    server {{
        listen 127.0.0.1:{http} default_server;
        listen 127.0.0.1:{https} ssl default_server;
        root {content};
        location = /small {{
            default_type text/plain;
            return 200 "{small}";
        }}
    }}
"""

PROXY_SERVER = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{http} default_server;
        listen 127.0.0.1:{https} ssl default_server;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same headers this proxy sends.
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
"""


@dataclass(frozen=True)
class Endpoint:
    """One way to the backend's content: directly, through nginx, or through this proxy."""

    name: str
    http_port: int
    https_port: int
    pid: int  # the process that serves requests (for nginx its worker): memory and CPU are read here

    def port(self, scheme: str) -> int:
        return self.https_port if scheme == "https" else self.http_port

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port(scheme)}{path}"


def start_nginx(
    stack: ExitStack, tools: Tools, name: str, folder: Path, body: str, access_log: str, cert: tuple[Path, Path], http: int, https: int
) -> Endpoint:
    """Start nginx (master + 1 worker) with its own prefix under folder; return its endpoint."""
    prefix = folder / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    access = "off" if access_log == "off" else str(prefix / access_log)
    conf.write_text(NGINX_COMMON.format(prefix=prefix, access_log=access, cert=cert[0], key=cert[1], body=body))
    master = start_service(stack, name, [tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], prefix)
    wait_for_port(master, http)
    wait_for_port(master, https)
    return Endpoint(name, http, https, nginx_worker(master))


def start_nginx_proxy(stack: ExitStack, tools: Tools, name: str, folder: Path, cert: tuple[Path, Path], backend_port: int) -> Endpoint:
    """Start nginx as a reverse proxy to the backend, access log on, on two free ports."""
    http, https = free_port(), free_port()
    body = PROXY_SERVER.format(backend=backend_port, http=http, https=https)
    return start_nginx(stack, tools, name, folder, body, "access.log", cert, http, https)


# ------------------------------------------------------------------ this proxy and the echo server


@dataclass(frozen=True)
class ProxyProcess:
    service: Service
    config: Path
    http_port: int
    https_port: int  # 0 when started without HTTPS


def start_proxy(stack: ExitStack, name: str, folder: Path, yaml_text: str, https: bool) -> ProxyProcess:
    """Start `python -m proxy run` with its defaults on 127.0.0.1:0; its access log goes to a file."""
    home = folder / name
    home.mkdir()
    config = home / "sites.yaml"
    config.write_text(yaml_text)
    tls = ["--https", "127.0.0.1:0", "--certs", str(home / "certs")] if https else ["--no-https"]
    command = [sys.executable, "-m", "proxy", "run", "--config", str(config), "--http", "127.0.0.1:0", *tls]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    service = start_service(stack, name, command, home, env=env)
    patterns = [r"listening on http://127\.0\.0\.1:(\d+)"] + ([r"listening on https://127\.0\.0\.1:(\d+)"] if https else [])
    matches = wait_for_lines(service, patterns)
    return ProxyProcess(service, config, int(matches[0].group(1)), int(matches[1].group(1)) if https else 0)


def proxy_endpoint(proxy: ProxyProcess) -> Endpoint:
    return Endpoint("proxy", proxy.http_port, proxy.https_port, proxy.service.process.pid)


def sites_yaml(backend_port: int, echo_port: int | None = None, extra_sites: int = 0) -> str:
    """Return a sites.yaml: bench.localhost -> the backend, optionally ws.localhost and filler sites.

    Filler sites point at distinct unused ports, as a big real file would.
    """
    lines = ["sites:"]
    lines += [f"  site{i}: 127.0.0.1:{20000 + i}" for i in range(extra_sites)]
    lines.append(f"  bench: 127.0.0.1:{backend_port}")
    if echo_port is not None:
        lines.append(f"  ws: 127.0.0.1:{echo_port}")
    return "\n".join(lines) + "\n"


async def serve_ws_echo() -> None:
    """Run the WebSocket echo backend until terminated; print its port."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening on {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def start_ws_echo(stack: ExitStack, folder: Path) -> int:
    """Start the echo server in its own process (not sharing a core's GIL with the client); return its port."""
    home = folder / "ws-echo"
    home.mkdir()
    service = start_service(stack, "ws-echo", [sys.executable, str(Path(__file__).resolve()), "--serve-ws-echo"], home)
    return int(wait_for_lines(service, [r"listening on (\d+)"])[0].group(1))


# ------------------------------------------------------------------ raw HTTP client


def connect(port: int, scheme: str, timeout: float = 10.0) -> socket.socket:
    """Return a connection to 127.0.0.1:port, TLS without verification for https (the certificates are throwaway)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if scheme != "https":
        return sock
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock, server_hostname=HOST)


def request_bytes(path: str, host: str = HOST, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n".encode()


def read_head(sock: socket.socket) -> tuple[int, int, bytes]:
    """Return (status, Content-Length, body bytes already read) of the response on sock."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > 65536:
            raise BenchError(f"no complete response head: {data[:200]!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, int(value), rest
    raise BenchError(f"response without Content-Length: {head[:300]!r}")


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Return (status, body) of a Content-Length response."""
    status, length, body = read_head(sock)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed inside a response body")
        body += chunk
    return status, body


def fetch(port: int, scheme: str, path: str, host: str = HOST) -> tuple[int, bytes]:
    """Return (status, body) of one GET on a fresh connection."""
    with connect(port, scheme) as sock:
        sock.sendall(request_bytes(path, host, close=True))
        return read_response(sock)


def check_endpoint(endpoint: Endpoint, scheme: str) -> None:
    """Raise unless the endpoint answers with the backend's content, so no run measures error pages."""
    status, body = fetch(endpoint.port(scheme), scheme, "/small")
    if (status, body) != (200, SMALL_BODY):
        raise BenchError(f"{endpoint.url(scheme, '/small')} answered {status} {body[:200]!r}, not 200 {SMALL_BODY!r}")
    status, body = fetch(endpoint.port(scheme), scheme, "/1m.bin")
    if status != 200 or len(body) != ONE_MIB:
        raise BenchError(f"{endpoint.url(scheme, '/1m.bin')} answered {status} with {len(body)} bytes")


# ------------------------------------------------------------------ measurements


@dataclass(frozen=True)
class WrkOutput:
    """What wrk --latency reports about one run."""

    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mib_per_s: float
    errors: str  # wrk's error lines, "" when there were none


@dataclass(frozen=True)
class LoadRun:
    """One wrk run, and the CPU the serving process spent on it."""

    wrk: WrkOutput
    cpu_us_per_request: float


TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(output: str) -> WrkOutput:
    """Return what wrk --latency printed, in requests, ms and MiB/s."""
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    done = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", output)
    if not (p50 and p99 and done and rate and transfer):
        raise BenchError(f"cannot read wrk's output:\n{output}")
    errors = "; ".join(line.strip() for line in output.splitlines() if "Socket errors" in line or "Non-2xx" in line)
    return WrkOutput(
        requests=int(done.group(1)),
        requests_per_s=float(rate.group(1)),
        p50_ms=float(p50.group(1)) * TIME_UNITS[p50.group(2)],
        p99_ms=float(p99.group(1)) * TIME_UNITS[p99.group(2)],
        mib_per_s=float(transfer.group(1)) * SIZE_UNITS[transfer.group(2)] / ONE_MIB,
        errors=errors,
    )


def run_wrk(tools: Tools, url: str, connections: int, seconds: int, server_pid: int) -> LoadRun:
    """Run wrk against url for seconds and read server_pid's CPU time around it."""
    threads = min(2, connections)
    command = [tools.wrk, f"-c{connections}", f"-t{threads}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}", url]
    cpu_before = cpu_seconds(server_pid)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu_used = cpu_seconds(server_pid) - cpu_before
    if finished.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed ({finished.returncode}):\n{finished.stdout}{finished.stderr}")
    output = parse_wrk(finished.stdout)
    if output.requests == 0:
        raise BenchError(f"wrk completed no request against {url}:\n{finished.stdout}")
    return LoadRun(output, cpu_used / output.requests * 1e6)


@dataclass(frozen=True)
class Download:
    """One large download: its rate and how much the serving process's memory grew meanwhile."""

    mib_per_s: float
    rss_growth_mib: float


def download(endpoint: Endpoint, scheme: str, path: str, time_limit: float = 120.0) -> Download:
    """Download path once over a fresh connection, sampling the server's RSS every few ms."""
    deadline = time.monotonic() + time_limit
    with connect(endpoint.port(scheme), scheme) as sock:
        rss_before = peak = rss_bytes(endpoint.pid)
        started = time.perf_counter()
        sock.sendall(request_bytes(path, close=True))
        status, length, rest = read_head(sock)
        if status != 200:
            raise BenchError(f"{endpoint.url(scheme, path)} answered {status}")
        received, sampled = len(rest), started
        buffer = memoryview(bytearray(ONE_MIB))
        while received < length:
            count = sock.recv_into(buffer)
            if count == 0:
                raise BenchError(f"{endpoint.url(scheme, path)}: connection closed after {received} of {length} bytes")
            received += count
            now = time.perf_counter()
            if now - sampled > 0.002:
                peak, sampled = max(peak, rss_bytes(endpoint.pid)), now
            if time.monotonic() > deadline:
                raise BenchError(f"{endpoint.url(scheme, path)}: not done within {time_limit:g} s")
        elapsed = time.perf_counter() - started
        peak = max(peak, rss_bytes(endpoint.pid))
    return Download(length / ONE_MIB / elapsed, (peak - rss_before) / ONE_MIB)


def sequential_requests(endpoint: Endpoint, count: int) -> None:
    """Send count requests one after another on one keep-alive connection."""
    with connect(endpoint.http_port, "http") as sock:
        for _ in range(count):
            sock.sendall(request_bytes("/small"))
            status, _ = read_response(sock)
            if status != 200:
                raise BenchError(f"{endpoint.url('http', '/small')} answered {status}")


@dataclass(frozen=True)
class IdleMemory:
    """Memory the server holds for client connections that made one request and stay open."""

    connections: int
    kib_per_connection: float


def idle_connections_memory(endpoint: Endpoint, count: int) -> IdleMemory:
    """Open count keep-alive connections, one request on each, and return the server's RSS growth per connection."""
    before = rss_bytes(endpoint.pid)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(endpoint.http_port, "http")
            sockets.append(sock)
            sock.sendall(request_bytes("/small"))
            status, _ = read_response(sock)
            if status != 200:
                raise BenchError(f"{endpoint.url('http', '/small')} answered {status} on idle connection {len(sockets)}")
        time.sleep(0.5)  # let the server finish what it does after a response (logs, inspector)
        after = rss_bytes(endpoint.pid)
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.5)  # let it close them before the next measurement
    return IdleMemory(count, (after - before) / 1024 / count)


@dataclass(frozen=True)
class EchoRate:
    """WebSocket round trips: one client, one message in flight."""

    messages: int
    per_s: float


async def echo_round_trips(url: str, host: str, count: int, time_limit: float) -> EchoRate:
    message = "x" * 32
    timeout = aiohttp.ClientTimeout(total=time_limit + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.ws_connect(url, headers={"Host": host}) as ws:
        done, started = 0, time.perf_counter()
        while done < count and time.perf_counter() - started < time_limit:
            await ws.send_str(message)
            reply = await ws.receive(timeout=10)
            if reply.type != aiohttp.WSMsgType.TEXT or reply.data != message:
                raise BenchError(f"{url}: the echo came back as {reply.type.name} {str(reply.data)[:100]!r}")
            done += 1
        elapsed = time.perf_counter() - started
    return EchoRate(done, done / elapsed)


def echo_rate(port: int, host: str, count: int, time_limit: float = 60.0) -> EchoRate:
    return asyncio.run(echo_round_trips(f"ws://127.0.0.1:{port}/", host, count, time_limit))


@dataclass(frozen=True)
class ConfigTiming:
    """What a big sites.yaml costs: parsing and validating it, building the routing table, a live reload."""

    parse_ms: float
    table_ms: float
    reload_ms: float


def time_config_swap(path: Path) -> tuple[float, float]:
    """Return (parse + validate ms, routing table ms) for the file, in this process, as the server does on reload."""
    text = path.read_text()
    started = time.perf_counter()
    config = parse_config_file_text(text, str(path))
    parsed = time.perf_counter()
    RoutingTable(config.sites)
    built = time.perf_counter()
    return (parsed - started) * 1000, (built - parsed) * 1000


def reload_latency(proxy: ProxyProcess, base_yaml: str, backend_port: int, name: str, time_limit: float = 20.0) -> float:
    """Save the file with one site added and return the ms until the proxy routes that site."""
    started = time.perf_counter()
    save_atomically(proxy.config, base_yaml + f"  {name}: 127.0.0.1:{backend_port}\n")
    while time.perf_counter() - started < time_limit:
        status, _ = fetch(proxy.http_port, "http", "/small", host=f"{name}.localhost")
        if status == 200:
            return (time.perf_counter() - started) * 1000
        time.sleep(0.005)
    raise BenchError(f"the proxy did not route {name}.localhost within {time_limit:g} s of the save:\n{proxy.service.output_tail()}")


def measure_config(proxy: ProxyProcess, base_yaml: str, backend_port: int, rep: int) -> ConfigTiming:
    parse_ms, table_ms = time_config_swap(proxy.config)
    reload_ms = reload_latency(proxy, base_yaml, backend_port, f"reload{rep}")
    return ConfigTiming(parse_ms, table_ms, reload_ms)


# ------------------------------------------------------------------ results


@dataclass
class Results:
    """Every measured value, per metric and endpoint, in repetition order."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, metric: str, endpoint: str, value: float) -> None:
        self.values.setdefault((metric, endpoint), []).append(value)

    def median(self, metric: str, endpoint: str) -> float | None:
        series = self.values.get((metric, endpoint))
        return statistics.median(series) if series else None

    def ratio(self, metric: str, endpoint: str, base: str) -> float | None:
        """Return the median of the per-repetition ratios endpoint / base."""
        pairs = zip(self.values.get((metric, endpoint), []), self.values.get((metric, base), []))
        ratios = [value / base_value for value, base_value in pairs if base_value]
        return statistics.median(ratios) if ratios else None

    def add_difference(self, metric: str, source: str, endpoint: str, base: str) -> None:
        """Record endpoint - base of source, for each repetition, as metric."""
        for value, base_value in zip(self.values.get((source, endpoint), []), self.values.get((source, base), [])):
            self.add(metric, endpoint, value - base_value)


def record_load(results: Results, metric: str, endpoint: str, run: LoadRun) -> None:
    results.add(f"{metric}.rps", endpoint, run.wrk.requests_per_s)
    results.add(f"{metric}.p50", endpoint, run.wrk.p50_ms)
    results.add(f"{metric}.p99", endpoint, run.wrk.p99_ms)
    results.add(f"{metric}.mibs", endpoint, run.wrk.mib_per_s)
    results.add(f"{metric}.cpu", endpoint, run.cpu_us_per_request)
    if run.wrk.errors:  # wrk prints these lines only when a count is not zero
        results.warnings.append(f"{metric} {endpoint}: {run.wrk.errors}")
    if "Non-2xx" in run.wrk.errors:
        raise BenchError(f"{metric} {endpoint}: wrk saw error responses ({run.wrk.errors}); the numbers would not mean anything")


# ------------------------------------------------------------------ one repetition


@dataclass(frozen=True)
class Bench:
    """Everything that is running, for the measurements to use."""

    tools: Tools
    settings: Settings
    folder: Path
    cert: tuple[Path, Path]  # nginx's certificate and key
    endpoints: tuple[Endpoint, ...]  # direct, nginx, proxy
    backend_port: int
    echo_port: int
    proxy_http_port: int
    one_site: ProxyProcess
    many_sites: ProxyProcess
    many_sites_yaml: str


def fresh_idle_memory(bench: Bench, name: str, rep: int) -> IdleMemory:
    """Start a new nginx or proxy, warm it lightly, measure its memory per idle connection, stop it.

    A new one, because a server just out of the load runs is still freeing (Python's cyclic
    garbage) or reusing memory from them, which swamps a few KiB per connection either way.
    """
    with ExitStack() as stack:
        if name == "nginx":
            endpoint = start_nginx_proxy(stack, bench.tools, f"nginx-idle-{rep}", bench.folder, bench.cert, bench.backend_port)
        else:
            proxy = start_proxy(stack, f"proxy-idle-{rep}", bench.folder, sites_yaml(bench.backend_port), https=False)
            endpoint = proxy_endpoint(proxy)
        sequential_requests(endpoint, 600)  # more than the inspector keeps (500), so it is full before
        time.sleep(0.5)
        return idle_connections_memory(endpoint, bench.settings.idle_connections)


def measure_scheme(bench: Bench, results: Results, scheme: str) -> None:
    s = bench.settings
    for endpoint in bench.endpoints:
        run = run_wrk(bench.tools, endpoint.url(scheme, "/small"), 50, s.load_seconds, endpoint.pid)
        record_load(results, f"{scheme}.small50", endpoint.name, run)
        progress(
            f"  {scheme} small, 50 connections, {endpoint.name}: {run.wrk.requests_per_s:,.0f} req/s, p50 {run.wrk.p50_ms:.2f} ms, p99 {run.wrk.p99_ms:.2f} ms"
        )
    for endpoint in bench.endpoints:
        run = run_wrk(bench.tools, endpoint.url(scheme, "/small"), 1, s.short_seconds, endpoint.pid)
        record_load(results, f"{scheme}.small1", endpoint.name, run)
        progress(f"  {scheme} small, 1 connection, {endpoint.name}: p50 {run.wrk.p50_ms * 1000:.0f} µs, p99 {run.wrk.p99_ms * 1000:.0f} µs")
    for endpoint in bench.endpoints:
        run = run_wrk(bench.tools, endpoint.url(scheme, "/1m.bin"), 8, s.short_seconds, endpoint.pid)
        record_load(results, f"{scheme}.mib1", endpoint.name, run)
        progress(f"  {scheme} 1 MiB, 8 connections, {endpoint.name}: {run.wrk.mib_per_s:,.0f} MiB/s")
    if s.big_download:
        for endpoint in bench.endpoints:
            result = download(endpoint, scheme, "/100m.bin")
            results.add(f"{scheme}.big.mibs", endpoint.name, result.mib_per_s)
            results.add(f"{scheme}.big.rss", endpoint.name, result.rss_growth_mib)
            progress(f"  {scheme} 100 MiB download, {endpoint.name}: {result.mib_per_s:,.0f} MiB/s, RSS +{result.rss_growth_mib:.1f} MiB")


def measure_repetition(bench: Bench, results: Results, rep: int) -> None:
    s = bench.settings
    progress(f"repetition {rep + 1} of {s.reps}")
    for scheme in ("http", "https"):
        measure_scheme(bench, results, scheme)
    for name in ("nginx", "proxy"):  # the direct backend holds no client state worth comparing
        idle = fresh_idle_memory(bench, name, rep)
        results.add("idle.kib", name, idle.kib_per_connection)
        progress(f"  {idle.connections} idle connections, {name}: {idle.kib_per_connection:.1f} KiB each")
    for name, port, host in (("direct", bench.echo_port, "127.0.0.1"), ("proxy", bench.proxy_http_port, WS_HOST)):
        rate = echo_rate(port, host, s.ws_messages)
        results.add("ws.rate", name, rate.per_s)
        progress(f"  WebSocket echo, {name}: {rate.per_s:,.0f} messages/s ({rate.messages} messages)")
    for name, proxy in (("one", bench.one_site), ("many", bench.many_sites)):
        run = run_wrk(bench.tools, f"http://127.0.0.1:{proxy.http_port}/small", 50, s.short_seconds * 2, proxy.service.process.pid)
        record_load(results, "sites", name, run)
        progress(f"  {'1 site' if name == 'one' else f'{s.many_sites:,} sites'}: {run.cpu_us_per_request:.0f} µs CPU per request")
    timing = measure_config(bench.many_sites, bench.many_sites_yaml, bench.backend_port, rep)
    results.add("config.parse", "proxy", timing.parse_ms)
    results.add("config.table", "proxy", timing.table_ms)
    results.add("config.reload", "proxy", timing.reload_ms)
    progress(f"  {s.many_sites:,} sites: parse + validate {timing.parse_ms:.0f} ms, routing table {timing.table_ms:.1f} ms, reload {timing.reload_ms:.0f} ms")


def warm_up(bench: Bench) -> None:
    """One short run per endpoint and scheme: pools filled, certificates minted, the inspector full."""
    for scheme in ("http", "https"):
        for endpoint in bench.endpoints:
            check_endpoint(endpoint, scheme)
            run_wrk(bench.tools, endpoint.url(scheme, "/small"), 50, 1, endpoint.pid)
    for proxy in (bench.one_site, bench.many_sites):
        run_wrk(bench.tools, f"http://127.0.0.1:{proxy.http_port}/small", 50, 1, proxy.service.process.pid)
    if bench.settings.big_download:  # the first read of the file fills the page cache: not in anyone's numbers
        for endpoint in bench.endpoints:
            download(endpoint, "http", "/100m.bin")
    echo_rate(bench.echo_port, "127.0.0.1", 100)
    echo_rate(bench.proxy_http_port, WS_HOST, 100)


# ------------------------------------------------------------------ report


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    digits: int
    scale: float = 1.0  # 1000 shows a value measured in ms as µs


def scheme_rows(scheme: str, settings: Settings) -> list[Row]:
    rows = [
        Row(f"{scheme}.small50.rps", "13 B responses, 50 connections: req/s", 0),
        Row(f"{scheme}.small50.p50", "… p50 latency, ms", 2),
        Row(f"{scheme}.small50.p99", "… p99 latency, ms", 2),
        Row(f"{scheme}.small50.cpu", "… CPU per request (serving process), µs", 0),
        Row(f"{scheme}.small1.p50", "13 B responses, 1 connection: p50 latency, µs", 0, 1000),
        Row(f"{scheme}.small1.p99", "… p99 latency, µs", 0, 1000),
        Row(f"{scheme}.small1.added", "… p50 added over direct, µs", 0, 1000),
        Row(f"{scheme}.mib1.mibs", "1 MiB responses, 8 connections: MiB/s", 0),
    ]
    if settings.big_download:
        rows += [
            Row(f"{scheme}.big.mibs", "one 100 MiB download: MiB/s", 0),
            Row(f"{scheme}.big.rss", "… RSS growth of the serving process, MiB", 1),
        ]
    if scheme == "http":
        rows.append(Row("idle.kib", f"{settings.idle_connections} idle keep-alive connections: RSS per connection, KiB", 1))
    return rows


def endpoint_table(results: Results, rows: list[Row]) -> list[str]:
    lines = ["| metric | direct | nginx | this proxy | proxy ÷ direct | proxy ÷ nginx |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        medians = [results.median(row.metric, name) for name in ENDPOINTS]
        cells = ["—" if value is None else fmt(value * row.scale, row.digits) for value in medians]
        ratios = [fmt_ratio(results.ratio(row.metric, "proxy", base)) for base in ("direct", "nginx")]
        lines.append(f"| {row.label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    return lines


def other_tables(results: Results, settings: Settings) -> list[str]:
    many = f"{settings.many_sites:,} sites"
    return [
        "| WebSocket echo, one client, one 32-byte message in flight | direct | this proxy | proxy ÷ direct |",
        "| --- | ---: | ---: | ---: |",
        f"| messages/s | {fmt(results.median('ws.rate', 'direct'), 0)} | {fmt(results.median('ws.rate', 'proxy'), 0)} | {fmt_ratio(results.ratio('ws.rate', 'proxy', 'direct'))} |",
        "",
        f"| sites.yaml size (this proxy, HTTP, 50 connections) | 1 site | {many} | {many} ÷ 1 site |",
        "| --- | ---: | ---: | ---: |",
        f"| CPU per request, µs | {fmt(results.median('sites.cpu', 'one'), 0)} | {fmt(results.median('sites.cpu', 'many'), 0)} | {fmt_ratio(results.ratio('sites.cpu', 'many', 'one'))} |",
        f"| req/s | {fmt(results.median('sites.rps', 'one'), 0)} | {fmt(results.median('sites.rps', 'many'), 0)} | {fmt_ratio(results.ratio('sites.rps', 'many', 'one'))} |",
        "",
        f"| {many} in one sites.yaml | ms |",
        "| --- | ---: |",
        f"| parse + validate (`parse_config_file_text`, in process) | {fmt(results.median('config.parse', 'proxy'), 0)} |",
        f"| build the routing table (`RoutingTable`, in process) | {fmt(results.median('config.table', 'proxy'), 1)} |",
        f"| reload: save (rename-over) to the new site answering, through the running proxy | {fmt(results.median('config.reload', 'proxy'), 0)} |",
    ]


@dataclass(frozen=True)
class Target:
    """One of issue 7's targets: a measured value and the limit it should stay within."""

    text: str
    value: float | None
    limit: float
    at_most: bool
    unit: str
    digits: int = 2


def issue_targets(results: Results, settings: Settings) -> list[Target]:
    added_ms = results.median("http.small1.added", "proxy")
    targets = [
        Target(
            "HTTP 13 B responses, 50 connections, proxy ÷ nginx req/s ≥ 0.35 (required; aim 0.5)",
            results.ratio("http.small50.rps", "proxy", "nginx"),
            0.35,
            False,
            "×",
        ),
        Target("HTTP 1 connection, p50 added over direct ≤ 150 µs", None if added_ms is None else added_ms * 1000, 150, True, " µs", 0),
        Target("HTTP 1 MiB responses, proxy ÷ nginx throughput ≥ 0.8", results.ratio("http.mib1.mibs", "proxy", "nginx"), 0.8, False, "×"),
    ]
    if settings.big_download:
        targets += [
            Target("HTTP 100 MiB download, proxy ÷ nginx ≥ 0.9", results.ratio("http.big.mibs", "proxy", "nginx"), 0.9, False, "×"),
            Target("HTTP 100 MiB download, proxy RSS growth ≤ 10 MiB", results.median("http.big.rss", "proxy"), 10, True, " MiB", 1),
        ]
    targets += [
        Target("1000 idle client connections ≤ 16 KiB of RSS each", results.median("idle.kib", "proxy"), 16, True, " KiB", 1),
        Target(f"{settings.many_sites:,} sites: CPU per request ≤ 1.10 × 1 site", results.ratio("sites.cpu", "many", "one"), 1.10, True, "×"),
        Target(f"{settings.many_sites:,} sites: reload ≤ 1000 ms", results.median("config.reload", "proxy"), 1000, True, " ms", 0),
    ]
    return targets


def target_lines(targets: list[Target]) -> list[str]:
    lines = ["| target | measured | |", "| --- | ---: | --- |"]
    for target in targets:
        if target.value is None:
            lines.append(f"| {target.text} | n/a | not measured |")
            continue
        met = target.value <= target.limit if target.at_most else target.value >= target.limit
        lines.append(f"| {target.text} | {target.value:,.{target.digits}f}{target.unit} | {'met' if met else 'missed'} |")
    return lines


def notes(results: Results) -> list[str]:
    """Return the caveats a reader needs, with the numbers that back them."""
    lines = []
    headroom = results.ratio("http.small50.rps", "direct", "nginx")
    if headroom is not None:
        lines.append(f"- The backend alone serves {headroom:.1f}× the 13 B req/s that nginx in front of it reaches, so it is not what limits either proxy.")
    lines += [
        '- wrk, the servers and the backend share the machine\'s cores; at 50 connections "direct" is partly limited by wrk itself.',
        "- Idle connections are measured on a new nginx and a new proxy (HTTP only) per repetition, after 600 requests on one "
        "connection, so neither the load runs' leftovers nor the inspector filling up count. RSS counts whole 4 KiB pages.",
        "- The 100 MiB download is read by one Python client (a 1 MiB recv_into buffer); its rate caps the direct numbers. "
        "nginx buffers the upstream response (its default `proxy_buffering on`, temp file included).",
        "- WebSocket round trips include the aiohttp client's and echo server's own time, on both sides of the ratio.",
    ]
    return lines


def first_line(command: list[str]) -> str:
    """Return the first line a command prints (stdout or stderr), or "unknown"."""
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (finished.stdout + finished.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def event_loop() -> str:
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio (uvloop is not installed: pip install '.[fast]')"


def machine_lines(tools: Tools) -> list[str]:
    commit = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]) if shutil.which("git") else "unknown"
    return [
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- Software: Python {platform.python_version()}, aiohttp {aiohttp.__version__}, {first_line([tools.nginx, '-v'])}, "
        f"{first_line([tools.wrk, '-v']).split(' Copyright')[0]}",
        f"- Proxy event loop: {event_loop()} (what `run` picks by default in this environment)",
        f"- Proxy commit: {commit}",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]


def report(results: Results, settings: Settings, tools: Tools, elapsed_s: float) -> str:
    lines = [
        "# localhost-proxy against nginx",
        "",
        f"`bench/compare.py{' --quick' if settings.quick else ''}`: {settings.reps} repetition{'s' if settings.reps != 1 else ''}, "
        f"interleaved (direct, nginx, this proxy, then the next metric), {elapsed_s / 60:.1f} min. "
        "Values are medians over the repetitions; ratios are medians of the per-repetition ratios.",
        "",
        *machine_lines(tools),
        "",
        "Setup, all on 127.0.0.1: **direct** is the backend, nginx with 1 worker (a 13-byte `return 200`, "
        "files by sendfile; TLS on its own port for HTTPS). **nginx** is a reverse proxy with 1 worker, "
        "upstream keepalive, HTTP/1.1 upstream, the same X-Forwarded-* headers, access log to a file. "
        "**this proxy** runs `python -m proxy run` with its defaults (inspector and access log on, log to a file). "
        f"Load is wrk (`-t2 -c50 -d{settings.load_seconds}s`, `-t1 -c1 -d{settings.short_seconds}s`, "
        f"1 MiB with `-t2 -c8 -d{settings.short_seconds}s`), no keep-alive limit on any side; HTTPS certificates are "
        "EC P-256 on every side and not verified by the clients. CPU and RSS are read from /proc for the process that "
        "serves the requests (for nginx its worker).",
        "",
        "## HTTP",
        "",
        *endpoint_table(results, scheme_rows("http", settings)),
        "",
        "## HTTPS",
        "",
        *endpoint_table(results, scheme_rows("https", settings)),
        "",
        "## WebSocket and config size",
        "",
        *other_tables(results, settings),
        "",
        "## Targets (issue 7)",
        "",
        *target_lines(issue_targets(results, settings)),
        "",
        "## Notes",
        "",
        *notes(results),
    ]
    if results.warnings:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in results.warnings]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def start_everything(stack: ExitStack, tools: Tools, settings: Settings, folder: Path) -> Bench:
    """Start the backends, nginx, and the three proxies; return what the measurements need."""
    folder.chmod(0o755)  # nginx's worker runs as nobody when started by root: it must reach the files
    content = folder / "content"
    write_content(content, settings.big_download)
    cert = write_self_signed(folder)
    backend_http, backend_https = free_port(), free_port()
    progress("starting the backends, nginx and this proxy")
    backend_body = BACKEND_SERVER.format(http=backend_http, https=backend_https, content=content, small=SMALL_BODY.decode())
    direct = start_nginx(stack, tools, "direct", folder, backend_body, "off", cert, backend_http, backend_https)
    nginx = start_nginx_proxy(stack, tools, "nginx", folder, cert, backend_http)
    echo_port = start_ws_echo(stack, folder)
    proxy = start_proxy(stack, "proxy", folder, sites_yaml(backend_http, echo_port), https=True)
    one_site = start_proxy(stack, "proxy-1-site", folder, sites_yaml(backend_http), https=False)
    many_yaml = sites_yaml(backend_http, extra_sites=settings.many_sites - 1)
    many_sites = start_proxy(stack, "proxy-many-sites", folder, many_yaml, https=False)
    endpoints = (direct, nginx, proxy_endpoint(proxy))
    return Bench(tools, settings, folder, cert, endpoints, backend_http, echo_port, proxy.http_port, one_site, many_sites, many_yaml)


def run(settings: Settings, out: Path) -> None:
    tools = ensure_tools()
    raise_open_file_limit()
    started = time.monotonic()
    results = Results()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="proxy-bench-")))
        bench = start_everything(stack, tools, settings, folder)
        warm_up(bench)
        for rep in range(settings.reps):
            measure_repetition(bench, results, rep)
    for scheme in ("http", "https"):
        for name in ("nginx", "proxy"):
            results.add_difference(f"{scheme}.small1.added", f"{scheme}.small1.p50", name, "direct")
    text = report(results, settings, tools, time.monotonic() - started)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    progress(f"written to {out}")


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 repetition, 1-2 s runs, no 100 MiB download")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 5; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.md", help="Markdown file to write (default bench/results.md)")
    parser.add_argument("--serve-ws-echo", action="store_true", help=argparse.SUPPRESS)  # the echo backend's own process
    args = parser.parse_args()
    if args.serve_ws_echo:
        asyncio.run(serve_ws_echo())
        return 0
    if args.reps < 0:
        parser.error("--reps must be 1 or more")
    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` cleans up as Ctrl-C does
    try:
        run(settings_from(args), args.out)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
