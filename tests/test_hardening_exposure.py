"""Local exposure, through the real `python -m proxy run` process: what it listens on, and what its
own pages tell a page at another name.

Every listener (HTTP and HTTPS, from flags or from `listen:` in the file, at start or on reload)
binds 127.0.0.1 / ::1 only unless --allow-remote is given; every sneaky spelling of "all
interfaces" is refused with exit 2 and a message naming --allow-remote, and nothing is left
listening. The proxy's own pages answer a foreign Host with the bare 404 and never send
Access-Control-Allow-* (not to an evil Origin, not to a Private-Network preflight).

Listening sockets are read from the kernel (psutil for the proxy's own sockets, /proc/net/tcp{,6}
for anything on its ports); nothing connects to a non-loopback address.

Cases: 59 (12 remote spellings of --http, 5 malformed --http, 3 --https and 4 `listen:` refusals,
4 --allow-remote acceptances, 1 default-bind check, 3 reloads, 8 foreign Hosts x 11 own pages,
1 foreign Host over HTTPS, 3 Host-header oddities, 5 own Hosts x 3 Origins x 16 pages and preflights).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.certs import trusting_nothing
from tests.support.proxies import LISTENING, LISTENING_HTTPS, PROXY, START_TIMEOUT, spawn
from tests.support.rawhttp import TIMEOUT, RawResponse, http_request, read_response
from tests.support.reloading import save_rename_over
from tests.support.system import free_port, needs_ipv6
from tests.support.waiting import wait_until_blocking

LOOPBACK = {"127.0.0.1", "::1"}
BARE_404 = b"Not Found\n"
RELOAD_TIMEOUT = 5.0


# ---------------------------------------------------------------- a proxy process, driven synchronously


@dataclass
class Running:
    """One `python -m proxy run` process with its output in files."""

    process: subprocess.Popen[bytes]
    folder: Path
    config: Path

    def stdout(self) -> str:
        return (self.folder / "proxy.stdout").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.folder / "proxy.stderr").read_text(errors="replace")

    @property
    def urls(self) -> list[str]:
        return LISTENING.findall(self.stdout())

    @property
    def https_urls(self) -> list[str]:
        return LISTENING_HTTPS.findall(self.stdout())

    @property
    def port(self) -> int:
        return int(self.urls[0].rsplit(":", 1)[1])

    @property
    def https_port(self) -> int:
        return int(self.https_urls[0].rsplit(":", 1)[1])

    def wait_for(self, text: str, *, stream: str = "stdout", timeout: float = START_TIMEOUT) -> None:
        def output() -> str:
            return self.stdout() if stream == "stdout" else self.stderr()

        wait_until_blocking(lambda: text in output() or self.process.poll() is not None, timeout)
        if text in output():
            return
        raise AssertionError(f"{text!r} not in the proxy's {stream} within {timeout} s (exit {self.process.poll()}):\n{self.stdout()}\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"the proxy did not exit within {timeout} s of signal {sig}") from None


def launch(folder: Path, config_text: str, *args: str, wait: bool = True) -> Running:
    """Start `run --config folder/sites.yaml *args`; wait for its `listening on` lines unless told not to."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sites.yaml"
    config.write_text(config_text)
    running = Running(spawn(folder, config, *args), folder, config)
    if wait:
        running.wait_for("listening on")
        time.sleep(0.1)  # every listener's line is printed at once; let the last ones land
    return running


@pytest.fixture
def processes() -> Iterator[list[Running]]:
    """Processes a test starts; killed at teardown if still running."""
    started: list[Running] = []
    yield started
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(5)


def refused_run(tmp_path: Path, config_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the proxy expecting it to refuse; return its result (killed after 15 s if it does not exit)."""
    config = tmp_path / "sites.yaml"
    config.write_text(config_text)
    try:
        return subprocess.run([*PROXY, "run", "--config", str(config), *args], capture_output=True, text=True, cwd=tmp_path, timeout=15, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the proxy ran instead of refusing {args}: {exc.stdout!r}") from None


# ---------------------------------------------------------------- what the kernel says is listening


def _decode_proc_address(hex_address: str) -> str:
    """Return the text form of a /proc/net/tcp{,6} address (each 32-bit word in host byte order)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    return str(ipaddress.ip_address(words))


def kernel_listeners(port: int) -> list[str]:
    """Return the addresses any process listens on at this TCP port, from /proc/net/tcp and tcp6."""
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: TCP_LISTEN
                    found.append(_decode_proc_address(address))
    return found


def proxy_listeners(pid: int) -> set[tuple[str, int]]:
    """Return (address, port) of every listening TCP socket the process holds."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def assert_only_loopback(running: Running) -> set[tuple[str, int]]:
    """Fail unless every socket the proxy listens on, and everything on its ports, is loopback."""
    mine = proxy_listeners(running.process.pid)
    assert mine, "the proxy holds no listening socket"
    remote = {(ip, port) for ip, port in mine if ip not in LOOPBACK}
    assert not remote, f"the proxy listens beyond loopback: {sorted(remote)}"
    for port in {port for _, port in mine}:
        others = [ip for ip in kernel_listeners(port) if ip not in LOOPBACK]
        assert not others, f"port {port} is also listened on at {others}"
    return mine


def assert_refused_with_allow_remote_hint(result: subprocess.CompletedProcess[str], *ports: int) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "listening on" not in result.stdout, result.stdout
    assert "--allow-remote" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for port in ports:
        assert kernel_listeners(port) == [], f"something listens on port {port} after the refusal"


SITES = "sites:\n  app1: 3000\n"

# ---------------------------------------------------------------- refused at start


REMOTE_SPELLINGS = [
    pytest.param("0.0.0.0:{port}", id="any-v4"),
    pytest.param("0:{port}", id="zero"),
    pytest.param("0.0:{port}", id="zero-two-parts"),
    pytest.param("000.000.000.000:{port}", id="zero-padded"),
    pytest.param("0x0:{port}", id="hex-zero"),
    pytest.param(" 0.0.0.0:{port} ", id="spaces"),
    pytest.param("[::]:{port}", id="any-v6"),
    pytest.param("[0:0:0:0:0:0:0:0]:{port}", id="any-v6-long"),
    pytest.param("[::0.0.0.0]:{port}", id="v4-compatible-any"),
    pytest.param("[::ffff:0.0.0.0]:{port}", id="v4-mapped-any"),
    pytest.param("[fe80::1%lo]:{port}", id="link-local-with-zone"),
    pytest.param("192.0.2.1:{port}", id="lan-address"),
]


@pytest.mark.parametrize("spelling", REMOTE_SPELLINGS)
def test_remote_http_flag_is_refused_and_nothing_listens(tmp_path: Path, spelling: str) -> None:
    port = free_port()
    result = refused_run(tmp_path, SITES, "--http", spelling.format(port=port), "--no-https")
    assert_refused_with_allow_remote_hint(result, port)


@pytest.mark.parametrize("address", [":0", "0.0.0.0", "0.0.0.0:", "*:0", "::0"], ids=["empty-host", "no-port", "empty-port", "star", "unbracketed-v6"])
def test_malformed_listen_flag_is_refused_before_binding(tmp_path: Path, address: str) -> None:
    result = refused_run(tmp_path, SITES, "--http", address, "--no-https")
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "listening on" not in result.stdout
    assert "--http" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("spelling", ["0.0.0.0:{port}", "[::]:{port}", "0:{port}"], ids=["any-v4", "any-v6", "zero"])
def test_remote_https_flag_is_refused_and_the_http_listener_is_not_left_open(tmp_path: Path, spelling: str) -> None:
    http_port, https_port = free_port(), free_port()
    result = refused_run(tmp_path, SITES, "--http", f"127.0.0.1:{http_port}", "--https", spelling.format(port=https_port), "--certs", str(tmp_path / "certs"))
    assert_refused_with_allow_remote_hint(result, http_port, https_port)


@pytest.mark.parametrize(
    ("listen", "args"),
    [
        pytest.param('  http: "0.0.0.0:{port}"\n', ["--no-https"], id="http-any-v4"),
        pytest.param('  http: "0:{port}"\n', ["--no-https"], id="http-zero"),
        pytest.param("  http: 0.0.0.0:{port}\n", ["--no-https"], id="http-any-v4-unquoted"),
        pytest.param('  https: "[::]:{port}"\n', ["--http", "127.0.0.1:0"], id="https-any-v6"),
    ],
)
def test_remote_listen_in_the_file_is_refused(tmp_path: Path, listen: str, args: list[str]) -> None:
    port = free_port()
    result = refused_run(tmp_path, "listen:\n" + listen.format(port=port) + SITES, *args, "--certs", str(tmp_path / "certs"))
    assert_refused_with_allow_remote_hint(result, port)


# ---------------------------------------------------------------- accepted with --allow-remote


@pytest.mark.parametrize(
    ("config_text", "args", "wanted"),
    [
        pytest.param(SITES, ["--http", "0.0.0.0:0", "--no-https"], {"0.0.0.0"}, id="flag-any-v4"),
        pytest.param(SITES, ["--http", "0:0", "--no-https"], {"0.0.0.0"}, id="flag-zero"),
        pytest.param('listen:\n  http: "0.0.0.0:0"\n' + SITES, ["--no-https"], {"0.0.0.0"}, id="file-any-v4"),
        pytest.param(SITES, ["--http", "127.0.0.1:0", "--https", "[::]:0"], {"127.0.0.1", "::"}, id="https-any-v6", marks=needs_ipv6),
    ],
)
def test_allow_remote_accepts_the_same_address_and_exits_0(
    tmp_path: Path, processes: list[Running], config_text: str, args: list[str], wanted: set[str]
) -> None:
    running = launch(tmp_path / "p", config_text, *args, "--allow-remote", "--certs", str(tmp_path / "certs"))
    processes.append(running)
    assert {ip for ip, _ in proxy_listeners(running.process.pid)} == wanted
    assert running.stop() == 0, running.stderr()
    assert "Traceback" not in running.stderr()


# ---------------------------------------------------------------- the default: loopback only


@needs_ipv6
def test_bare_ports_from_the_file_bind_both_loopbacks_for_http_and_https_and_nothing_else(tmp_path: Path, processes: list[Running]) -> None:
    """No listen flags at all: `listen: {http: 0, https: 0}` and the default certs folder."""
    running = launch(tmp_path / "p", "listen:\n  http: 0\n  https: 0\n" + SITES)
    processes.append(running)
    mine = assert_only_loopback(running)
    assert mine == {("127.0.0.1", running.port), ("::1", running.port), ("127.0.0.1", running.https_port), ("::1", running.https_port)}, mine
    assert running.stop() == 0


# ---------------------------------------------------------------- reload


async def own_index(port: int, *, tls: bool = False) -> RawResponse:
    """GET / as the dashboard's own host over a raw (optionally TLS, unverified) connection."""
    context = trusting_nothing() if tls else None
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost" if tls else None), TIMEOUT)
    try:
        writer.write(http_request("GET", "/api/sites", host="localhost", headers=[("Connection", "close")]))
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(("scheme", "moved_to"), [("http", '"0.0.0.0:0"'), ("https", '"[::]:0"')])
async def test_reload_moving_listen_to_a_remote_address_is_refused_and_the_old_listener_serves(
    tmp_path: Path, processes: list[Running], scheme: str, moved_to: str
) -> None:
    listen = {"http": '"127.0.0.1:0"', "https": '"127.0.0.1:0"'}
    running = launch(tmp_path / "p", f"listen:\n  http: {listen['http']}\n  https: {listen['https']}\n" + SITES)
    processes.append(running)
    old_port = running.port if scheme == "http" else running.https_port
    before = proxy_listeners(running.process.pid)

    await save_rename_over(
        running.config,
        f"listen:\n  http: {listen['http'] if scheme != 'http' else moved_to}\n  https: {listen['https'] if scheme != 'https' else moved_to}\n"
        + SITES
        + "  app2: 3001\n",
    )
    running.wait_for("cannot move the listener", stream="stderr", timeout=RELOAD_TIMEOUT)
    log = running.stderr()
    assert "--allow-remote" in log, log
    assert f"{scheme}://127.0.0.1:{old_port}" in log.split("cannot move the listener", 1)[1], "the log should say where it still listens"
    assert proxy_listeners(running.process.pid) == before
    assert_only_loopback(running)
    answer = await own_index(old_port, tls=scheme == "https")
    assert answer.status == 200 and answer.complete
    assert "app2.localhost" in answer.body.decode(), "the rest of the file should still have been applied"
    assert running.stop() == 0


async def test_reload_to_a_remote_address_with_allow_remote_moves_the_listener(tmp_path: Path, processes: list[Running]) -> None:
    running = launch(tmp_path / "p", 'listen:\n  http: "127.0.0.1:0"\n' + SITES, "--no-https", "--allow-remote")
    processes.append(running)
    await save_rename_over(running.config, 'listen:\n  http: "0.0.0.0:0"\n' + SITES)
    running.wait_for("listening on http://0.0.0.0:", timeout=RELOAD_TIMEOUT)
    assert {ip for ip, _ in proxy_listeners(running.process.pid)} == {"0.0.0.0"}
    assert running.stop() == 0


# ---------------------------------------------------------------- the proxy's own pages and a foreign Host


@dataclass
class Dashboard:
    running: Running

    @property
    def port(self) -> int:
        return self.running.port


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One proxy (HTTP and HTTPS on 127.0.0.1) with a site whose app is down, shared by the page checks."""
    folder = tmp_path_factory.mktemp("dashboard")
    down = free_port()
    running = launch(folder / "p", f"sites:\n  app1: 127.0.0.1:{down}\n", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--certs", str(folder / "certs"))
    try:
        yield Dashboard(running)
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(5)


OWN_PAGES = [
    ("GET", "/"),
    ("GET", "/assets/dashboard.js"),
    ("GET", "/api/sites"),
    ("GET", "/api/sites?check=1"),
    ("GET", "/api/requests"),
    ("GET", "/api/requests/1"),
    ("GET", "/api/events"),
    ("GET", "/no-such-page"),
    ("HEAD", "/api/sites"),
    ("POST", "/api/requests/1/replay"),
    ("OPTIONS", "/api/sites"),
]
PREFLIGHT = [
    ("Access-Control-Request-Method", "POST"),
    ("Access-Control-Request-Headers", "content-type"),
    ("Access-Control-Request-Private-Network", "true"),
]


async def head_only(port: int, request: bytes, *, tls: bool = False, server_hostname: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send a request and return (status, headers, the first bytes of the body); never waits for a streamed body's end."""
    context = trusting_nothing() if tls else None
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname if tls else None), TIMEOUT)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]
        body = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
            if request.startswith(b"HEAD ") or length == 0:
                pass
            elif length is not None:
                body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
            else:
                body = await asyncio.wait_for(reader.read(4096), 0.5)
        return int(status_line.split(" ")[1]), headers, body
    finally:
        writer.close()


def access_control(headers: list[tuple[str, str]]) -> list[str]:
    return [f"{k}: {v}" for k, v in headers if k.lower().startswith("access-control-allow")]


def page_request(method: str, path: str, host: str, extra: list[tuple[str, str]]) -> bytes:
    body = b"{}" if method == "POST" else None
    headers = [*extra, ("Content-Type", "application/json")] if method == "POST" else extra
    return http_request(method, path, host=host, headers=[*headers, ("Connection", "close")], body=body)


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:{port}",
    "evil.example.",
    "localhost.evil.example",
    "proxy.localhost.evil.example:{port}",
    "127.0.0.1.nip.io",
    "0x7f000001",
    "[::ffff:7f00:1]:{port}",
]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_own_pages_on_a_foreign_host_are_the_bare_404(dashboard: Dashboard, host: str) -> None:
    """A DNS-rebinding page (any name that now resolves to 127.0.0.1) sees nothing of the dashboard or API."""
    name = host.format(port=dashboard.port)
    for method, path in OWN_PAGES:
        extra = [("Origin", f"http://{name}")] + (PREFLIGHT if method == "OPTIONS" else [])
        status, headers, body = await head_only(dashboard.port, page_request(method, path, name, extra))
        assert status == 404, f"{method} {path} on Host {name}: {status}"
        if method != "HEAD":
            assert body == BARE_404, f"{method} {path} on Host {name}: {body[:200]!r}"
        assert not access_control(headers), f"{method} {path} on Host {name}: {access_control(headers)}"


async def test_own_pages_on_a_foreign_host_over_https_are_the_bare_404(dashboard: Dashboard) -> None:
    """Over TLS without SNI (so the handshake succeeds), a foreign Host still gets only the bare 404."""
    for method, path in OWN_PAGES:
        extra = [("Origin", "https://evil.example")] + (PREFLIGHT if method == "OPTIONS" else [])
        status, headers, body = await head_only(dashboard.running.https_port, page_request(method, path, "evil.example", extra), tls=True)
        assert status == 404, f"{method} {path}: {status}"
        if method != "HEAD":
            assert body == BARE_404, f"{method} {path}: {body[:200]!r}"
        assert not access_control(headers)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /api/sites HTTP/1.0\r\n\r\n", id="http10-without-host"),
        pytest.param(b"GET /api/sites HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET http://evil.example/api/sites HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", id="absolute-form-foreign-authority"),
    ],
)
async def test_odd_host_headers_never_reach_the_api(dashboard: Dashboard, request_bytes: bytes) -> None:
    status, headers, body = await head_only(dashboard.port, request_bytes)
    assert status in (400, 404), status
    assert b"app1.localhost" not in body and b'"sites"' not in body, body[:200]
    assert not access_control(headers)


OWN_HOSTS = ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "proxy.localhost"]


@pytest.mark.parametrize("host", OWN_HOSTS)
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://app1.localhost:{port}"], ids=["evil", "opaque", "a-site"])
async def test_own_pages_send_no_access_control_allow_headers(dashboard: Dashboard, host: str, origin: str) -> None:
    """Not on any page, API answer, error page or preflight, whatever the Origin asks."""
    name, origin = host.format(port=dashboard.port), origin.format(port=dashboard.port)
    pages = [*OWN_PAGES, ("GET", "/"), ("OPTIONS", "/api/requests/1/replay"), ("OPTIONS", "/")]
    for method, path in pages:
        extra = [("Origin", origin)] + (PREFLIGHT if method == "OPTIONS" else [])
        status, headers, _ = await head_only(dashboard.port, page_request(method, path, name, extra))
        assert not access_control(headers), f"{method} {path} on Host {name} with Origin {origin}: {status} {access_control(headers)}"
        if method == "OPTIONS":
            assert status >= 400, f"a preflight on {path} was answered {status}"
    # The proxy's own answers for sites: the unknown-name 404 and the app-down 502.
    for host_header, wanted in ((f"nosuch.localhost:{dashboard.port}", 404), (f"app1.localhost:{dashboard.port}", 502)):
        for method in ("GET", "OPTIONS"):
            extra = [("Origin", origin)] + (PREFLIGHT if method == "OPTIONS" else [])
            status, headers, _ = await head_only(dashboard.port, page_request(method, "/", host_header, extra))
            assert status == wanted, f"{method} / on {host_header}: {status}"
            assert not access_control(headers), f"{method} / on {host_header}: {access_control(headers)}"
