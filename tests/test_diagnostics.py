"""`ports`, `who` and `doctor`: real listeners this test opens, the CLI run as `python -m proxy`.

The listeners are sockets of this very process, so the OS must name os.getpid() as their holder.
One socket binds 0.0.0.0 to check the all-interfaces flag; nothing ever connects to it. Pure
helpers (name guessing, rows, verdicts) are tested directly. Every file lives under tmp_path.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.config.model import ListenAddress, Upstream
from proxy.config.parse import parse_config
from proxy.diagnostics.doctor import (
    FAIL,
    INFO,
    OK,
    SKIP,
    WARN,
    Check,
    check_lines,
    has_failure,
    judge_ca_expiry,
    judge_config,
    judge_key_mode,
    judge_privileged_ports,
    judge_proxy_port,
    judge_upstream,
)
from proxy.diagnostics.ports import ListeningSocket, guess_site_name, is_proxy_command, port_entries, port_table, who_lines
from tests.support.proxies import cli, write
from tests.support.system import free_port, has_ipv6_loopback


@dataclass
class Listeners:
    """Ports this test process listens on."""

    v4: int
    v6: int | None  # None when the machine has no ::1
    any_v4: int  # 0.0.0.0: every interface


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    """Listening sockets on 127.0.0.1, [::1] and 0.0.0.0, each on its own ephemeral port."""
    opened: list[socket.socket] = []

    def listen(family: socket.AddressFamily, host: str) -> int:
        s = socket.socket(family, socket.SOCK_STREAM)
        opened.append(s)
        s.bind((host, 0))
        s.listen()
        port: int = s.getsockname()[1]
        return port

    try:
        v6 = listen(socket.AF_INET6, "::1") if has_ipv6_loopback() else None
        yield Listeners(listen(socket.AF_INET, "127.0.0.1"), v6, listen(socket.AF_INET, "0.0.0.0"))
    finally:
        for s in opened:
            s.close()


# ---------------------------------------------------------------- who


def test_who_names_the_process_that_listens(tmp_path: Path, listeners: Listeners) -> None:
    result = cli("who", str(listeners.v4), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{listeners.v4}: " in result.stdout
    assert f"(pid {os.getpid()})" in result.stdout
    assert "command: " in result.stdout and "pytest" in result.stdout


def test_who_on_a_free_port_is_a_negative_answer(tmp_path: Path) -> None:
    port = free_port()
    result = cli("who", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert f"nothing listens on port {port}" in result.stdout


def test_who_refuses_a_non_port(tmp_path: Path) -> None:
    assert cli("who", "70000", cwd=tmp_path).returncode == 2


# ---------------------------------------------------------------- ports


def test_ports_json_lists_test_listeners_and_marks_the_routed_one(tmp_path: Path, listeners: Listeners) -> None:
    config = write(tmp_path / "sites.yaml", f"sites:\n  app1: {listeners.v4}\n  other: {free_port()}\n")
    result = cli("ports", "--json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(r["address"], r["port"]): r for r in json.loads(result.stdout)}
    mine = {key: r for key, r in rows.items() if r["pid"] == os.getpid()}

    routed = mine[("127.0.0.1", listeners.v4)]
    assert routed["routed_by"] == ["app1.localhost"]
    assert routed["all_interfaces"] is False
    assert routed["program"]
    assert set(routed) == {"address", "port", "pid", "program", "all_interfaces", "routed_by"}

    everywhere = mine[("0.0.0.0", listeners.any_v4)]
    assert everywhere["all_interfaces"] is True
    assert everywhere["routed_by"] == []
    if listeners.v6 is not None:
        assert mine[("::1", listeners.v6)]["routed_by"] == []


def test_ports_table_suggests_add_for_unrouted_listeners(tmp_path: Path, listeners: Listeners) -> None:
    config = write(tmp_path / "sites.yaml", f"sites:\n  app1: {listeners.v4}\n")
    result = cli("ports", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines[f"127.0.0.1:{listeners.v4}"].endswith("app1.localhost")
    assert "ALL INTERFACES" in lines[f"0.0.0.0:{listeners.any_v4}"]
    # "python", or "python-PORT" when another python listener on this machine took the name first.
    assert re.search(rf"localhost-proxy add python(-{listeners.any_v4})? {listeners.any_v4}$", lines[f"0.0.0.0:{listeners.any_v4}"])


def test_ports_with_a_broken_config_still_lists_and_says_why(tmp_path: Path, listeners: Listeners) -> None:
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 300o\n")
    result = cli("ports", "--json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0
    assert f"{config}:2:9:" in result.stderr
    rows = [r for r in json.loads(result.stdout) if r["pid"] == os.getpid()]
    assert {r["port"] for r in rows} >= {listeners.v4, listeners.any_v4}
    assert all(r["routed_by"] == [] for r in rows)


def test_ports_without_a_config_still_lists(tmp_path: Path, listeners: Listeners) -> None:
    result = cli("ports", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "sites.yaml" in result.stderr
    assert any(r["port"] == listeners.v4 for r in json.loads(result.stdout))


# ---------------------------------------------------------------- doctor


def doctor_config(tmp_path: Path, sites: str) -> Path:
    """A config whose proxy ports are free, so only the checks under test can complain."""
    return write(tmp_path / "sites.yaml", f"listen:\n  http: {free_port()}\n  https: {free_port()}\nsites:\n{sites}")


def lines_with(output: str, status: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(status + " ")]


def test_doctor_warns_about_a_dead_upstream_and_exits_0(tmp_path: Path, listeners: Listeners) -> None:
    dead = free_port()
    config = doctor_config(tmp_path, f"  live: {listeners.v4}\n  dead: 127.0.0.1:{dead}\n")
    result = cli("doctor", "--config", str(config), "--certs", str(tmp_path / "certs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("valid (2 sites)" in line for line in lines_with(result.stdout, OK))
    assert any(f"live.localhost -> http://localhost:{listeners.v4}: accepts" in line for line in lines_with(result.stdout, OK))
    dead_lines = [line for line in lines_with(result.stdout, WARN) if f"127.0.0.1:{dead}" in line]
    assert len(dead_lines) == 1 and "dead.localhost" in dead_lines[0]
    assert "start the app" in result.stdout
    assert not lines_with(result.stdout, FAIL)
    assert any("no local CA" in line for line in lines_with(result.stdout, WARN))
    assert not (tmp_path / "certs").exists(), "doctor must not create the CA"


def test_doctor_fails_on_a_broken_config_with_file_line_col(tmp_path: Path) -> None:
    config = write(tmp_path / "sites.yaml", "sites:\n  app1: 3000\n  api: 300o\n")
    result = cli("doctor", "--config", str(config), "--certs", str(tmp_path / "certs"), cwd=tmp_path)
    assert result.returncode == 1
    assert any("has problems" in line for line in lines_with(result.stdout, FAIL))
    assert f"{config}:3:8: " in result.stdout
    assert "did you mean 3000?" in result.stdout


def test_doctor_fails_on_a_world_readable_ca_key_with_the_chmod_fix(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    made = cli("ca", "--certs", str(certs), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key = certs / "ca-key.pem"
    key.chmod(0o644)
    config = doctor_config(tmp_path, "  {}\n")
    result = cli("doctor", "--config", str(config), "--certs", str(certs), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert any(str(key) in line and "mode 644" in line for line in lines_with(result.stdout, FAIL))
    assert f"fix: chmod 600 {key}" in result.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o644, "doctor must change nothing"


def test_doctor_on_a_private_ca_passes_the_key_and_expiry_checks(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert cli("ca", "--certs", str(certs), cwd=tmp_path).returncode == 0
    config = doctor_config(tmp_path, "  {}\n")
    result = cli("doctor", "--config", str(config), "--certs", str(certs), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert any("is private (mode 600)" in line for line in lines_with(result.stdout, OK))
    assert any("the CA is valid until" in line for line in lines_with(result.stdout, OK))


def test_doctor_fails_when_a_foreign_program_holds_the_proxy_port(tmp_path: Path, listeners: Listeners) -> None:
    config = write(tmp_path / "sites.yaml", f"listen:\n  http: 127.0.0.1:{listeners.v4}\n  https: {free_port()}\nsites: {{}}\n")
    result = cli("doctor", "--config", str(config), "--certs", str(tmp_path / "certs"), cwd=tmp_path)
    assert result.returncode == 1
    taken = [line for line in lines_with(result.stdout, FAIL) if "listen.http" in line]
    assert len(taken) == 1 and f"(pid {os.getpid()})" in taken[0]


# ---------------------------------------------------------------- pure: names, rows, verdicts


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("node", "node"),
        ("python3", "python"),
        ("python3.11", "python"),
        ("Python", "python"),
        ("ruby3.2", "ruby"),
        ("php-fpm8.2", "php-fpm"),
        ("Google Chrome Helper", "google-chrome-helper"),
        ("uwsgi_worker", "uwsgi-worker"),
        ("node.exe", "node"),
        ("localhost", "app"),
        ("12345", "app"),
        ("---", "app"),
        (None, "app"),
        ("x" * 100, "x" * 50),
    ],
    ids=lambda v: str(v)[:20],
)
def test_guess_site_name(program: str | None, expected: str) -> None:
    name = guess_site_name(program, 3000)
    assert name == expected
    parse_config(f"sites:\n  {name}: 3000\n", "sites.yaml")  # a valid site name, or this raises


def test_guess_site_name_appends_the_port_when_the_name_is_taken() -> None:
    assert guess_site_name("node", 5173, taken={"node.localhost"}) == "node-5173"


def sock(address: str, port: int, pid: int | None = 10, program: str | None = "node", cmdline: tuple[str, ...] = ()) -> ListeningSocket:
    return ListeningSocket(address, port, pid, program, cmdline)


def test_port_entries_mark_routes_suggest_names_and_skip_remote_addresses() -> None:
    config = parse_config("sites:\n  app1: 3000\n  api: '[::1]:8000'\n  node: 9999\n", "sites.yaml")
    listeners = [
        sock("127.0.0.1", 3000),
        sock("::1", 3000),
        sock("0.0.0.0", 8000, program="python3"),  # api dials ::1 only: not this one
        sock("::", 8000, program="python3"),  # [::] takes ::1 too
        sock("127.0.0.1", 5173),
        sock("::1", 5173),
        sock("127.0.0.2", 4000, pid=None, program=None),
        sock("192.168.1.5", 22, program="sshd"),  # neither loopback nor every interface
        sock("127.0.0.1", 7080, program="python3", cmdline=("python3", "-m", "proxy", "run")),
    ]
    entries = port_entries(listeners, config)
    by_endpoint = {e.listener.endpoint: e for e in entries}
    assert "192.168.1.5:22" not in by_endpoint
    assert by_endpoint["127.0.0.1:3000"].routed_by == ["app1.localhost"]
    assert by_endpoint["[::1]:3000"].routed_by == ["app1.localhost"]
    assert by_endpoint["0.0.0.0:8000"].routed_by == []
    assert by_endpoint["[::]:8000"].routed_by == ["api.localhost"]
    # node.localhost is taken, so the port is appended; both addresses of 5173 get the same name.
    assert by_endpoint["127.0.0.1:5173"].suggestion == by_endpoint["[::1]:5173"].suggestion == "localhost-proxy add node-5173 5173"
    assert by_endpoint["0.0.0.0:8000"].suggestion == "localhost-proxy add python 8000"
    assert by_endpoint["127.0.0.2:4000"].suggestion == "localhost-proxy add app 127.0.0.2:4000"
    assert by_endpoint["127.0.0.1:7080"].is_proxy and by_endpoint["127.0.0.1:7080"].suggestion is None

    table = port_table(entries)
    assert table[0].split() == ["LISTEN", "REACH", "PID", "PROGRAM", "SITES"]
    assert len({line.index("REACH") if "REACH" in line else None for line in table[:1]}) == 1
    row = next(line for line in table if line.startswith("0.0.0.0:8000"))
    assert row.split()[:4] == ["0.0.0.0:8000", "ALL", "INTERFACES", "10"]
    assert next(line for line in table if line.startswith("127.0.0.2:4000")).split()[2:4] == ["-", "?"]
    assert next(line for line in table if line.startswith("127.0.0.1:7080")).endswith("(localhost-proxy itself)")
    assert port_entries(listeners, None)[0].routed_by == []


def test_port_table_columns_line_up() -> None:
    table = port_table(port_entries([sock("127.0.0.1", 3000), sock("::1", 51730, pid=123456, program="python3")], None))
    for column in ("REACH", "PID", "PROGRAM", "SITES"):
        at = table[0].index(column)
        assert all(line[at - 1] == " " and line[at] != " " for line in table), column


def test_who_lines_give_pid_program_and_command_line() -> None:
    listeners = [sock("127.0.0.1", 3000, cmdline=("node", "server.js")), sock("0.0.0.0", 3000, pid=None, program=None), sock("::1", 4000)]
    assert who_lines(3000, listeners) == [
        "127.0.0.1:3000: node (pid 10)",
        "  command: node server.js",
        "0.0.0.0:3000 (all interfaces): a process of another user; run with sudo to see which",
    ]
    assert who_lines(5000, listeners) == []


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (("/usr/bin/python3", "-m", "proxy", "run", "--config", "x"), True),
        (("/home/me/.venv/bin/localhost-proxy", "run"), True),
        (("/home/me/.venv/bin/localhost-proxy", "doctor"), False),
        (("node", "server.js", "run"), False),
        ((), False),
    ],
)
def test_is_proxy_command(cmdline: tuple[str, ...], expected: bool) -> None:
    assert is_proxy_command(cmdline) is expected


def test_proxy_port_free_held_by_the_proxy_or_taken() -> None:
    address = ListenAddress(None, 7080)
    assert judge_proxy_port("http", address, [], "sites.yaml").status == OK
    proxy = sock("127.0.0.1", 7080, pid=77, program="python3", cmdline=("python3", "-m", "proxy", "run"))
    held = judge_proxy_port("http", address, [proxy], "sites.yaml")
    assert held.status == OK and "pid 77" in held.summary
    taken = judge_proxy_port("http", address, [proxy, sock("::1", 7080, pid=5)], "sites.yaml")
    assert taken.status == FAIL and "node (pid 5)" in taken.summary
    assert any("--http 7081" in line for line in taken.fix)


def test_dead_upstream_is_a_warning_with_a_fix() -> None:
    check = judge_upstream("app1.localhost", Upstream("http", "localhost", 3000), accepts=False)
    assert check.status == WARN
    assert "127.0.0.1:3000 or [::1]:3000" in check.summary
    assert check.fix and "start the app" in check.fix[0]


def test_key_mode_and_expiry_verdicts() -> None:
    assert judge_key_mode("/c/ca-key.pem", 0o600).status == OK
    loose = judge_key_mode("/c/ca-key.pem", 0o640)
    assert loose.status == FAIL and loose.fix == ("chmod 600 /c/ca-key.pem",)
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    days = datetime.timedelta(days=1)
    assert judge_ca_expiry("/c/ca.pem", now + 61 * days, now, "ca").status == OK
    assert judge_ca_expiry("/c/ca.pem", now + 59 * days, now, "ca").status == WARN
    assert judge_ca_expiry("/c/ca.pem", now - days, now, "ca").status == FAIL


@pytest.mark.parametrize(
    ("start", "is_root", "platform", "wanted", "expected"),
    [
        (80, False, "linux", [80, 443], OK),
        (1024, False, "linux", [7080, 7443], INFO),
        (1024, False, "linux", [80, 7443], WARN),
        (1024, True, "linux", [80, 443], INFO),
        (None, False, "linux", [7080], SKIP),
        (None, False, "macos", [80], SKIP),
    ],
)
def test_low_ports_are_never_a_failure(start: int | None, is_root: bool, platform: str, wanted: list[int], expected: str) -> None:
    check = judge_privileged_ports(start, is_root, platform, wanted)
    assert check.status == expected
    if expected in (INFO, WARN):
        assert any("ip_unprivileged_port_start=80" in line for line in check.fix)
        assert any("setcap cap_net_bind_service=+ep" in line for line in check.fix)


def test_report_lines_and_exit_verdict() -> None:
    checks = [Check(OK, "fine"), Check(WARN, "hmm", ("detail",), ("do this", "or that")), Check(INFO, "fyi", fix=("how",))]
    assert check_lines(checks) == ["ok    fine", "warn  hmm", "      detail", "      fix: do this", "           or that", "info  fyi", "      how: how"]
    assert not has_failure(checks)
    assert has_failure([*checks, judge_config("s.yaml", None, None)])
