"""The command line as users drive it: `python -m proxy ...` in a real subprocess.

Checks the printed `listening on` lines, the sites table, the access log, `check`'s
FILE:LINE:COL errors and the exit codes. Sockets are real, on 127.0.0.1 and ::1 only;
every file lives under tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.proxies import LISTENING, PROXY, ProxyFactory, cli, write
from tests.support.system import free_port, needs_ipv6
from tests.support.waiting import wait_until

CONSOLE_SCRIPT = Path(sys.executable).parent / "localhost-proxy"
ACCESS_DURATION = re.compile(r"\d+(?:\.\d+)?\s*(?:ms|s)\b")

# Three mistakes, one per kind, on lines 3, 5 and 6 (1-based) of this text.
THREE_ERRORS = textwrap.dedent(
    """\
    sites:
      app1: 3000
      api: 300o
      web:
        upstrem: 4000
      app1.localhost: 5000
    """
)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


class Running:
    """A `python -m proxy run` subprocess whose output goes to files we poll."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.cwd = cwd
        self.out = cwd / "run.stdout"
        self.err = cwd / "run.stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen([*PROXY, *args], cwd=cwd, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    async def urls(self, timeout: float = 10.0) -> list[str]:
        """Return the `listening on` URLs once printed; fail if the process exits first."""
        if not await wait_until(lambda: LISTENING.search(self.stdout()) or self.process.poll() is not None, timeout):
            raise AssertionError(f"no 'listening on' within {timeout} s:\n{self.stdout()}\n{self.stderr()}")
        if not LISTENING.search(self.stdout()):
            raise AssertionError(f"exited with {self.process.returncode}:\n{self.stdout()}\n{self.stderr()}")
        await asyncio.sleep(0.1)  # the [::1] line follows the IPv4 one
        return LISTENING.findall(self.stdout())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    """Processes started by a test; killed at teardown."""
    started: list[Running] = []
    yield started
    for process in started:
        process.stop()


def start(running: list[Running], args: list[str], cwd: Path) -> Running:
    process = Running(args, cwd)
    running.append(process)
    return process


# ---------------------------------------------------------------- entry points and help


def test_console_script_sits_next_to_python() -> None:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} is missing: is the package installed?"
    assert os.access(CONSOLE_SCRIPT, os.X_OK)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["check", "--help"]], ids=["top", "run", "check"])
def test_console_script_help_works(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    no_traceback(result)


def test_console_script_and_module_print_the_same_help(tmp_path: Path) -> None:
    via_script = subprocess.run([str(CONSOLE_SCRIPT), "run", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    via_module = cli("run", "--help", cwd=tmp_path)
    assert via_script.stdout == via_module.stdout


def test_run_help_says_flags_override_the_listen_section(tmp_path: Path) -> None:
    result = cli("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "--http" in text and "--no-https" in text and "--allow-remote" in text and "--config" in text
    assert re.search(r"overrid", text, re.I), text
    assert "listen" in text, text


@pytest.mark.parametrize("command", ["run", "check"])
def test_every_subcommand_takes_config_defaulting_to_sites_yaml(tmp_path: Path, command: str) -> None:
    result = cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--config" in result.stdout
    assert "sites.yaml" in result.stdout


# ---------------------------------------------------------------- listening


async def test_listening_line_is_flushed_at_once_into_a_pipe(tmp_path: Path) -> None:
    """Even with stdout a pipe (block-buffered by default), the line arrives while the proxy runs."""
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    process = await asyncio.create_subprocess_exec(
        *PROXY,
        "run",
        "--config",
        str(config),
        "--http",
        "127.0.0.1:0",
        "--no-https",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=10)).decode()
        assert process.returncode is None, "the proxy must still be running"
        assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+\n", first), first
        assert int(first.rsplit(":", 1)[1]) > 0
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), timeout=10)


async def test_host_port_listens_on_that_address_only(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 3000}, http="127.0.0.1:0")
    assert len(proxy.urls) == 1
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proxy.urls[0])
    assert proxy.port > 0


@needs_ipv6
async def test_bracketed_ipv6_listens_on_ipv6_only(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": 3000}, http="[::1]:0")
    assert len(proxy.urls) == 1
    assert re.fullmatch(r"http://\[::1\]:\d+", proxy.urls[0])
    async with client.get(proxy.base + "/", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200


@needs_ipv6
async def test_bare_port_listens_on_both_loopbacks_ipv4_first(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    port = free_port()
    proxy = await start_proxy({"app1": 3000}, http=str(port))
    assert proxy.urls == [f"http://127.0.0.1:{port}", f"http://[::1]:{port}"]
    for url in proxy.urls:
        async with client.get(url + "/", headers={"Accept": "application/json"}) as resp:
            assert resp.status == 200, url


@needs_ipv6
async def test_bare_port_zero_reuses_the_ipv4_pick_for_ipv6(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 3000}, http="0")
    assert len(proxy.urls) == 2, proxy.urls
    v4, v6 = proxy.urls
    port = v4.rsplit(":", 1)[1]
    assert v4 == f"http://127.0.0.1:{port}"
    assert v6 == f"http://[::1]:{port}"
    assert int(port) > 0


async def test_sites_table_lists_each_site_with_its_url(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 3000, "api": "127.0.0.1:8000"})
    out = proxy.stdout()
    after_listening = out.split("\n", len(proxy.urls))[-1]  # the table comes after the listening lines
    assert out.index("listening on") < out.index("app1.localhost")
    assert f"http://app1.localhost:{proxy.port}" in after_listening, out
    assert f"http://api.localhost:{proxy.port}" in after_listening, out
    assert "3000" in after_listening and "8000" in after_listening


def test_bad_http_address_is_a_usage_error(tmp_path: Path) -> None:
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    result = cli("run", "--config", str(config), "--http", "not-an-address", "--no-https", cwd=tmp_path)
    assert result.returncode == 2
    assert "listening on" not in result.stdout
    no_traceback(result)


# ---------------------------------------------------------------- access log


async def test_access_log_has_one_line_per_request(start_proxy: ProxyFactory, client: aiohttp.ClientSession, echo_server: TestServer) -> None:
    upstream_port = echo_server.port
    proxy = await start_proxy({"app1": f"127.0.0.1:{upstream_port}"})
    paths = ["/first?x=1", "/second", "/third/deeper"]
    for path in paths:
        async with client.get(proxy.base + path, headers={"Host": "app1.localhost"}) as resp:
            assert resp.status == 200
            await resp.read()

    def lines_for(path: str, text: str) -> list[str]:
        return [line for line in text.splitlines() if f" {path} " in line or line.endswith(f" {path}")]

    await wait_until(lambda: all(lines_for(p, proxy.stderr()) for p in paths), 5)
    for path in paths:
        lines = lines_for(path, proxy.stderr())
        assert len(lines) == 1, f"{path}: {lines}\n{proxy.stderr()}"
        line = lines[0]
        assert "app1.localhost" in line
        assert "GET" in line
        assert re.search(r"\b200\b", line)
        assert f"127.0.0.1:{upstream_port}" in line
        assert ACCESS_DURATION.search(line), line
    assert not any(lines_for(p, proxy.stdout()) for p in paths), "access lines belong on stderr"


# ---------------------------------------------------------------- default config file


def test_check_reads_sites_yaml_in_the_current_folder(tmp_path: Path) -> None:
    write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_without_sites_yaml_names_the_default_file(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "sites.yaml" in result.stderr
    no_traceback(result)


async def test_run_reads_sites_yaml_in_the_current_folder(tmp_path: Path, running: list[Running]) -> None:
    write(tmp_path / "sites.yaml", "sites:\n  fromcwd: 3000\n")
    process = start(running, ["run", "--http", "127.0.0.1:0", "--no-https"], tmp_path)
    urls = await process.urls()
    port = urls[0].rsplit(":", 1)[1]
    await asyncio.sleep(0.2)
    assert f"fromcwd.localhost:{port}" in process.stdout()


# ---------------------------------------------------------------- check


def test_check_valid_file_exits_0(tmp_path: Path) -> None:
    config = write(tmp_path / "good.yaml", "sites:\n  app1: 3000\n  api: 127.0.0.1:8000\n")
    result = cli("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_check_reports_every_error_in_file_order_with_1_based_positions(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", THREE_ERRORS)
    result = cli("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 3, result.stderr
    positions = []
    for line in lines:
        match = re.match(rf"{re.escape(str(config))}:(\d+):(\d+): (.+)", line)
        assert match, line
        positions.append((int(match[1]), int(match[2])))
    # `api: 300o` is line 3, the value at column 8; `upstrem` line 5 column 5; `app1.localhost` line 6 column 3.
    assert [p[0] for p in positions] == [3, 5, 6], lines
    assert positions == [(3, 8), (5, 5), (6, 3)], lines
    port, key, duplicate = lines
    assert "300o" in port and "did you mean 3000" in port
    assert "upstrem" in key and "did you mean" in key and "upstream" in key
    assert "app1.localhost" in duplicate and "line 2" in duplicate


def test_check_empty_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    result = cli("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert re.match(rf"{re.escape(str(config))}:1:1: .*empty", result.stderr), result.stderr
    no_traceback(result)


def test_check_missing_file_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "nowhere.yaml"
    result = cli("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert re.search(r"no such file|not found|does not exist", result.stderr, re.I), result.stderr
    no_traceback(result)


# ---------------------------------------------------------------- run: exit codes


def test_run_with_broken_config_exits_2_with_the_same_lines_as_check(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", THREE_ERRORS)
    checked = cli("check", "--config", str(config), cwd=tmp_path)
    result = cli("run", "--config", str(config), "--http", "127.0.0.1:0", "--no-https", cwd=tmp_path)
    assert result.returncode == 2
    assert "listening on" not in result.stdout
    no_traceback(result)
    problem_lines = [line for line in result.stderr.splitlines() if line.startswith(f"{config}:")]
    assert problem_lines == checked.stderr.strip().splitlines()


def test_run_with_missing_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "nowhere.yaml"
    result = cli("run", "--config", str(config), "--http", "127.0.0.1:0", "--no-https", cwd=tmp_path)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "listening on" not in result.stdout
    no_traceback(result)


@pytest.fixture
def port_holder(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A python process listening on 127.0.0.1; yields (port, pid)."""
    code = "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 10)
        assert ready, "the port holder printed no port within 10 s"
        port = int(holder.stdout.readline())
        yield port, holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_run_on_a_port_in_use_names_the_holder(tmp_path: Path, port_holder: tuple[int, int]) -> None:
    port, pid = port_holder
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    result = cli("run", "--config", str(config), "--http", f"127.0.0.1:{port}", "--no-https", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "python" in result.stderr.lower()
    assert str(pid) in result.stderr
    assert "listening on" not in result.stdout
    no_traceback(result)


def test_run_on_a_bare_port_in_use_on_ipv4_exits_2(tmp_path: Path, port_holder: tuple[int, int]) -> None:
    port, pid = port_holder
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    result = cli("run", "--config", str(config), "--http", str(port), "--no-https", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert str(pid) in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0:0", "0:0", "[::]:0", "[0:0:0:0:0:0:0:0]:0", "0.0.0.0:7080"],
)
def test_run_refuses_non_loopback_flag_without_allow_remote(tmp_path: Path, address: str) -> None:
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n")
    result = cli("run", "--config", str(config), "--http", address, "--no-https", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "listening on" not in result.stdout
    assert "--allow-remote" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize("address", ['"0.0.0.0:0"', '"0:0"', '"[::]:0"'])
def test_run_refuses_non_loopback_listen_in_file_without_allow_remote(tmp_path: Path, address: str) -> None:
    config = write(tmp_path / "sites.yaml", f"listen:\n  http: {address}\nsites:\n  app1: 3000\n")
    result = cli("run", "--config", str(config), "--no-https", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "listening on" not in result.stdout
    assert "--allow-remote" in result.stderr
    no_traceback(result)


async def test_allow_remote_accepts_every_interface(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 3000}, "--allow-remote", http="0.0.0.0:0")
    assert re.fullmatch(r"http://0\.0\.0\.0:\d+", proxy.urls[0]), proxy.urls
    assert await proxy.stop() == 0


# ---------------------------------------------------------------- listen: in the file


async def test_listen_in_file_is_used_without_http_flag(tmp_path: Path, running: list[Running]) -> None:
    port = free_port()
    write(tmp_path / "sites.yaml", f"listen:\n  http: 127.0.0.1:{port}\nsites:\n  app1: 3000\n")
    process = start(running, ["run", "--no-https"], tmp_path)
    assert await process.urls() == [f"http://127.0.0.1:{port}"]


@needs_ipv6
async def test_listen_bare_port_in_file_listens_on_both_loopbacks(tmp_path: Path, running: list[Running]) -> None:
    port = free_port()
    write(tmp_path / "sites.yaml", f"listen:\n  http: {port}\nsites:\n  app1: 3000\n")
    process = start(running, ["run", "--no-https"], tmp_path)
    assert await process.urls() == [f"http://127.0.0.1:{port}", f"http://[::1]:{port}"]


async def test_http_flag_overrides_listen_in_file(tmp_path: Path, running: list[Running]) -> None:
    in_file = free_port()
    write(tmp_path / "sites.yaml", f"listen:\n  http: 127.0.0.1:{in_file}\nsites:\n  app1: 3000\n")
    process = start(running, ["run", "--http", "127.0.0.1:0", "--no-https"], tmp_path)
    urls = await process.urls()
    assert len(urls) == 1
    assert urls[0] != f"http://127.0.0.1:{in_file}"
    with pytest.raises(OSError):  # nothing listens on the file's port
        socket.create_connection(("127.0.0.1", in_file), timeout=1).close()


async def test_loopback_http_flag_overrides_non_loopback_listen_in_file(tmp_path: Path, running: list[Running]) -> None:
    write(tmp_path / "sites.yaml", 'listen:\n  http: "0.0.0.0:0"\nsites:\n  app1: 3000\n')
    process = start(running, ["run", "--http", "127.0.0.1:0", "--no-https"], tmp_path)
    urls = await process.urls()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", urls[0]), urls


# ---------------------------------------------------------------- the proxy's own hosts


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "proxy.localhost", "proxy.localhost:{port}", "PROXY.LOCALHOST."],
)
async def test_own_hosts_serve_the_index_page(start_proxy: ProxyFactory, client: aiohttp.ClientSession, host: str) -> None:
    proxy = await start_proxy({"app1": 3000})
    headers = {"Host": host.format(port=proxy.port), "Accept": "application/json"}
    async with client.get(proxy.base + "/", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [site["host"] for site in body["sites"]] == ["app1.localhost"]


@needs_ipv6
async def test_index_page_over_ipv6(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": 3000}, http="0")
    async with client.get(proxy.urls[1] + "/", headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200
        assert "app1.localhost" in await resp.text()


@pytest.mark.parametrize("name", ["localhost", "proxy.localhost", "proxy", "Proxy.Localhost"])
def test_site_named_like_the_proxy_is_a_config_error(tmp_path: Path, name: str) -> None:
    config = write(tmp_path / "sites.yaml", f"sites:\n  app1: 3000\n  {name}: 4000\n")
    checked = cli("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 2
    assert checked.stderr.startswith(f"{config}:3:3: "), checked.stderr
    ran = cli("run", "--config", str(config), "--http", "127.0.0.1:0", "--no-https", cwd=tmp_path)
    assert ran.returncode == 2
    assert "listening on" not in ran.stdout
    no_traceback(ran)


# ---------------------------------------------------------------- aiohttp's C parser


async def test_pure_python_parser_warns_loudly(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy({"app1": 3000}, env={"AIOHTTP_NO_EXTENSIONS": "1"})
    err = proxy.stderr()
    assert "WARNING" in err, err
    assert "AIOHTTP_NO_EXTENSIONS" in err


async def test_c_parser_runs_without_the_warning(start_proxy: ProxyFactory) -> None:
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        pytest.skip("AIOHTTP_NO_EXTENSIONS is set for the whole run")
    proxy = await start_proxy({"app1": 3000})
    assert "AIOHTTP_NO_EXTENSIONS" not in proxy.stderr()
