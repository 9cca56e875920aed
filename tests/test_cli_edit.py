"""`add`, `rm` and `list` as users drive them: `python -m proxy ...` in real subprocesses.

Each test edits a sites.yaml under tmp_path (never the checkout) and checks the whole text after
the edit, the exit code and stderr, that refused edits leave the file's bytes and mtime alone, and
that a running proxy picks the edit up. Sockets are real, on loopback only; every wait is a poll
with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.support.proxies import PROXY, ProxyFactory, cli
from tests.support.system import free_port
from tests.support.waiting import wait_until

CLI_TIMEOUT = 20.0
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: any rewrite moves the mtime off it
FILE_LINE_COL = re.compile(r"^(?P<file>\S*sites\.yaml):(?P<line>\d+):(?P<col>\d+): ", re.MULTILINE)

# Comments in every place users put them: a header, after values, above a site, a commented-out
# site at the key's indentation, blank lines between sites, and a trailing example block.
COMMENTED = """\
# localhost-proxy sites for the shop project.
# Run `localhost-proxy run` next to this file.

listen:
  http: 7080   # the port browsers use

sites:
  # the storefront
  shop: 3000          # vite dev server

  api:                # the backend, two workers
    upstream: [8000, 8001]
    preserve_host: false

  docs: 127.0.0.1:5173
  # admin: 9000       (off while the admin app is broken)

# Examples:
#   web: {root: ./public}
#   legacy: https://127.0.0.1:8443
"""


async def cli_async(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`cli` without blocking the event loop (for tests whose upstreams run in this loop)."""
    process = await asyncio.create_subprocess_exec(*PROXY, *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"`{' '.join(args)}` did not finish within {CLI_TIMEOUT} s") from None
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, stdout.decode(), stderr.decode())


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def user_error(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip(), "a user error must say what went wrong on stderr"
    return result


@dataclass(frozen=True)
class Snapshot:
    """What an edit that is refused must not change."""

    data: bytes
    mtime_ns: int
    mode: int
    folder: tuple[str, ...]

    @classmethod
    def of(cls, path: Path) -> Snapshot:
        st = path.stat()
        return cls(path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode), tuple(sorted(os.listdir(path.parent))))


def write_old(path: Path, text: str) -> Path:
    """Write text and date the file back, so a rewrite with the same bytes still shows in the mtime."""
    path.write_bytes(text.encode())
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return path


def list_json(config: Path, cwd: Path) -> list[dict[str, Any]]:
    result = ok(cli("list", "--config", str(config), "--json", cwd=cwd))
    probes = json.loads(result.stdout)
    assert isinstance(probes, list)
    return probes


def by_host(probes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["host"]: p for p in probes}


# ---------------------------------------------------------------- comments and layout are kept


def test_add_then_rm_keep_every_comment_and_line(tmp_path: Path) -> None:
    """`add` inserts one line after the last site (before the trailing comments); `rm` takes exactly it out."""
    config = write_old(tmp_path / "sites.yaml", COMMENTED)

    ok(cli("add", "--config", str(config), "app3", "4000", cwd=tmp_path))
    after_add = config.read_text()
    assert after_add == COMMENTED.replace("  docs: 127.0.0.1:5173\n", "  docs: 127.0.0.1:5173\n  app3: 4000\n")
    ok(cli("check", "--config", str(config), cwd=tmp_path))

    ok(cli("rm", "--config", str(config), "app3", cwd=tmp_path))
    assert config.read_text() == COMMENTED


def test_rm_of_a_one_line_site_removes_only_its_line(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    ok(cli("rm", "--config", str(config), "docs", cwd=tmp_path))
    assert config.read_text() == COMMENTED.replace("  docs: 127.0.0.1:5173\n", "")
    ok(cli("check", "--config", str(config), cwd=tmp_path))


def test_rm_of_a_block_site_removes_its_lines_and_one_of_the_blank_lines_around_it(tmp_path: Path) -> None:
    """A multi-line site goes whole, comment on its key line included; the blank lines either side collapse to one."""
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    ok(cli("rm", "--config", str(config), "api.localhost", cwd=tmp_path))
    block = "  api:                # the backend, two workers\n    upstream: [8000, 8001]\n    preserve_host: false\n\n"
    assert block in COMMENTED
    assert config.read_text() == COMMENTED.replace(block, "")
    ok(cli("check", "--config", str(config), cwd=tmp_path))


def test_replace_changes_only_the_value_and_keeps_the_line_comment(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    ok(cli("add", "--config", str(config), "--replace", "shop", "3001", cwd=tmp_path))
    assert config.read_text() == COMMENTED.replace("  shop: 3000          #", "  shop: 3001          #")
    assert by_host(list_json(config, tmp_path))["shop.localhost"]["targets"] == ["localhost:3001"]


def test_replace_of_a_block_site_with_a_one_line_value(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    ok(cli("add", "--config", str(config), "--replace", "api", "8002", cwd=tmp_path))
    text = config.read_text()
    assert yaml.safe_load(text)["sites"]["api"] == 8002
    assert "# the backend, two workers" in text
    assert "upstream: [8000, 8001]" not in text
    # Everything outside the api block is as it was.
    before, _, rest = COMMENTED.partition("  api:")
    after = rest.partition("    preserve_host: false\n")[2]
    assert text.startswith(before) and text.endswith(after)
    ok(cli("check", "--config", str(config), cwd=tmp_path))


def test_add_and_rm_under_an_empty_sites_key_keep_its_comments(tmp_path: Path) -> None:
    original = "# my sites\nsites:   # none yet\n\n# Examples:\n#   app1: 3000\n"
    config = write_old(tmp_path / "sites.yaml", original)
    ok(cli("add", "--config", str(config), "app1", "3000", cwd=tmp_path))
    assert config.read_text() == original.replace("# none yet\n", "# none yet\n  app1: 3000\n")
    ok(cli("rm", "--config", str(config), "app1", cwd=tmp_path))
    assert config.read_text() == original


def test_crlf_file_stays_crlf(tmp_path: Path) -> None:
    original = b"# sites\r\nsites:\r\n  shop: 3000   # vite\r\n\r\n# the end\r\n"
    config = tmp_path / "sites.yaml"
    config.write_bytes(original)
    ok(cli("add", "--config", str(config), "app1", "4000", cwd=tmp_path))
    assert config.read_bytes() == original.replace(b"# vite\r\n", b"# vite\r\n  app1: 4000\r\n")
    ok(cli("rm", "--config", str(config), "app1", cwd=tmp_path))
    assert config.read_bytes() == original


# ---------------------------------------------------------------- every one-line TARGET form

TARGETS = [
    # (TARGET as typed, the value YAML must read back, list's targets)
    ("3000", 3000, ["localhost:3000"]),
    ("localhost:3000", "localhost:3000", ["localhost:3000"]),
    ("127.0.0.1:5173", "127.0.0.1:5173", ["127.0.0.1:5173"]),
    ("[::1]:4000", "[::1]:4000", ["[::1]:4000"]),
    ("http://[::1]:4000", "http://[::1]:4000", ["[::1]:4000"]),
    ("https://127.0.0.1:8443", "https://127.0.0.1:8443", ["https://127.0.0.1:8443"]),
    ("[8000, 8001]", [8000, 8001], ["localhost:8000, localhost:8001"]),
    ("{upstream: 8000, preserve_host: false}", {"upstream": 8000, "preserve_host": False}, ["localhost:8000"]),
    ("{root: ./public}", {"root": "./public"}, None),  # None: "files in <tmp_path>/public"
]


@pytest.mark.parametrize(("target", "value", "targets"), TARGETS, ids=[t[0] for t in TARGETS])
def test_add_accepts_every_one_line_target_form(tmp_path: Path, target: str, value: object, targets: list[str] | None) -> None:
    (tmp_path / "public").mkdir()
    original = "# my sites\nsites:\n  other: 5000   # keep me\n"
    config = write_old(tmp_path / "sites.yaml", original)

    ok(cli("add", "--config", str(config), "app1", target, cwd=tmp_path))

    text = config.read_text()
    assert text.startswith(original)
    assert text.count("\n") == original.count("\n") + 1
    assert yaml.safe_load(text)["sites"] == {"other": 5000, "app1": value}
    ok(cli("check", "--config", str(config), cwd=tmp_path))
    probes = by_host(list_json(config, tmp_path))
    assert set(probes) == {"other.localhost", "app1.localhost"}
    if targets is None:
        (line,) = probes["app1.localhost"]["targets"]
        assert str(tmp_path / "public") in line
    else:
        assert probes["app1.localhost"]["targets"] == targets


# ---------------------------------------------------------------- refusals leave the file alone


@pytest.mark.parametrize("name", ["shop", "shop.localhost", "SHOP"], ids=["bare", "with-localhost", "upper-case"])
def test_add_of_an_existing_site_exits_2_and_writes_nothing(tmp_path: Path, name: str) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    before = Snapshot.of(config)
    result = user_error(cli("add", "--config", str(config), name, "4000", cwd=tmp_path))
    assert "shop.localhost" in result.stderr and "--replace" in result.stderr
    assert Snapshot.of(config) == before


def test_rm_of_an_unknown_site_exits_2_with_a_suggestion(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    before = Snapshot.of(config)
    result = user_error(cli("rm", "--config", str(config), "shpo", cwd=tmp_path))
    assert "did you mean shop" in result.stderr
    assert Snapshot.of(config) == before


def test_rm_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = user_error(cli("rm", "--config", str(tmp_path / "sites.yaml"), "app1", cwd=tmp_path))
    assert "sites.yaml" in result.stderr
    assert os.listdir(tmp_path) == []


INVALID = [
    ("99999", "port"),  # past 65535
    ("300o", "300o"),  # neither a port nor an address
    ("{root: ./missing}", "missing"),  # the folder does not exist
    ("{upstrem: 8000}", "upstrem"),  # unknown key
]


@pytest.mark.parametrize(("target", "mentions"), INVALID, ids=[t[0] for t in INVALID])
def test_add_whose_result_is_invalid_exits_2_with_file_line_col_and_writes_nothing(tmp_path: Path, target: str, mentions: str) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    before = Snapshot.of(config)
    result = user_error(cli("add", "--config", str(config), "app1", target, cwd=tmp_path))
    match = FILE_LINE_COL.search(result.stderr)
    assert match, f"no FILE:LINE:COL line in:\n{result.stderr}"
    # The new site would land on the line after docs (1-based), where the problem is.
    assert int(match["line"]) == COMMENTED.splitlines().index("  docs: 127.0.0.1:5173") + 2
    assert mentions in result.stderr
    assert Snapshot.of(config) == before


# ---------------------------------------------------------------- atomic writes


def test_edits_keep_the_file_mode_and_leave_no_temp_files(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    config.chmod(0o600)
    for args in (["add", "app3", "4000"], ["add", "--replace", "app3", "4001"], ["rm", "app3"], ["rm", "docs"]):
        ok(cli(*args, "--config", str(config), cwd=tmp_path))
        assert stat.S_IMODE(config.stat().st_mode) == 0o600, args
        assert os.listdir(tmp_path) == ["sites.yaml"], args


def test_refused_edits_leave_no_temp_files(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", COMMENTED)
    config.chmod(0o600)
    user_error(cli("add", "--config", str(config), "app1", "99999", cwd=tmp_path))
    user_error(cli("add", "--config", str(config), "shop", "4000", cwd=tmp_path))
    user_error(cli("rm", "--config", str(config), "nope", cwd=tmp_path))
    assert os.listdir(tmp_path) == ["sites.yaml"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_edit_through_a_symlink_keeps_the_symlink(tmp_path: Path) -> None:
    real = write_old(tmp_path / "real.yaml", COMMENTED)
    link = tmp_path / "sites.yaml"
    link.symlink_to(real.name)
    ok(cli("add", "app3", "4000", cwd=tmp_path))
    assert link.is_symlink()
    assert "  app3: 4000\n" in real.read_text()
    assert sorted(os.listdir(tmp_path)) == ["real.yaml", "sites.yaml"]


# ---------------------------------------------------------------- --config and new files


def test_config_defaults_to_sites_yaml_in_the_working_folder(tmp_path: Path) -> None:
    ok(cli("add", "app1", "3000", cwd=tmp_path))
    config = tmp_path / "sites.yaml"
    assert yaml.safe_load(config.read_text()) == {"sites": {"app1": 3000}}
    ok(cli("add", "app2", "127.0.0.1:5173", cwd=tmp_path))
    ok(cli("check", cwd=tmp_path))
    result = ok(cli("list", "--json", cwd=tmp_path))
    assert [p["host"] for p in json.loads(result.stdout)] == ["app1.localhost", "app2.localhost"]
    ok(cli("rm", "app1", cwd=tmp_path))
    assert yaml.safe_load(config.read_text()) == {"sites": {"app2": "127.0.0.1:5173"}}
    assert os.listdir(tmp_path) == ["sites.yaml"]


def test_add_on_a_missing_file_creates_it(tmp_path: Path) -> None:
    config = tmp_path / "dev.yaml"
    ok(cli("add", "--config", str(config), "app1", "3000", cwd=tmp_path))
    assert yaml.safe_load(config.read_text()) == {"sites": {"app1": 3000}}
    ok(cli("check", "--config", str(config), cwd=tmp_path))
    assert os.listdir(tmp_path) == ["dev.yaml"]


def test_add_on_a_missing_file_with_an_invalid_target_creates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "sites.yaml"
    user_error(cli("add", "--config", str(config), "app1", "99999", cwd=tmp_path))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- list


async def test_list_shows_up_for_a_live_upstream_and_down_for_a_free_port(tmp_path: Path, echo_server: TestServer) -> None:
    config = write_old(tmp_path / "sites.yaml", f"sites:\n  live: {echo_server.port}\n  dead: {free_port()}\n")
    result = ok(await cli_async("list", "--config", str(config), cwd=tmp_path))
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["live.localhost"][-1] == "up", result.stdout
    assert rows["dead.localhost"][-1] == "down", result.stdout
    assert f"localhost:{echo_server.port}" in " ".join(rows["live.localhost"])


async def test_list_json_has_host_targets_and_up(tmp_path: Path, echo_server: TestServer) -> None:
    dead = free_port()
    config = write_old(tmp_path / "sites.yaml", f"sites:\n  live: 127.0.0.1:{echo_server.port}\n  dead: {dead}\n")
    result = ok(await cli_async("list", "--config", str(config), "--json", cwd=tmp_path))
    probes = json.loads(result.stdout)
    assert isinstance(probes, list) and len(probes) == 2
    for probe in probes:
        assert isinstance(probe["host"], str)
        assert isinstance(probe["targets"], list) and all(isinstance(t, str) for t in probe["targets"])
        assert isinstance(probe["up"], bool)
    sites = by_host(probes)
    assert sites["live.localhost"]["up"] is True
    assert sites["live.localhost"]["targets"] == [f"127.0.0.1:{echo_server.port}"]
    assert sites["dead.localhost"]["up"] is False
    assert sites["dead.localhost"]["targets"] == [f"localhost:{dead}"]


def test_list_json_of_a_file_without_sites_is_an_empty_list(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", "# nothing yet\nsites:\n")
    assert list_json(config, tmp_path) == []


def test_list_of_an_invalid_file_exits_2_with_file_line_col(tmp_path: Path) -> None:
    config = write_old(tmp_path / "sites.yaml", "sites:\n  app1: 99999\n")
    result = user_error(cli("list", "--config", str(config), cwd=tmp_path))
    assert FILE_LINE_COL.search(result.stderr), result.stderr


# ---------------------------------------------------------------- a running proxy picks edits up


async def poll_status(client: aiohttp.ClientSession, url: str, host: str, want: int, timeout: float = 5.0) -> None:
    """Request url with Host: host until it answers `want`; fail with the last answer after timeout."""
    last: object = None

    async def answers() -> bool:
        nonlocal last
        try:
            async with client.get(url, headers={"Host": host}, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
                last = resp.status
                return resp.status == want
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
            return False

    if not await wait_until(answers, timeout):
        raise AssertionError(f"{host} did not answer {want} within {timeout} s; last answer: {last!r}")


async def test_running_proxy_picks_up_add_and_rm(start_proxy: ProxyFactory, echo_server: TestServer, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy({"app1": echo_server.port})
    url = f"{proxy.base}/hello"
    await poll_status(client, url, "app1.localhost", 200)
    async with client.get(url, headers={"Host": "app2.localhost"}) as resp:
        assert resp.status == 404

    ok(await cli_async("add", "--config", str(proxy.config), "app2", str(echo_server.port), cwd=proxy.folder))
    await poll_status(client, url, "app2.localhost", 200)
    async with client.get(url, headers={"Host": "app2.localhost"}) as resp:
        assert (await resp.json())["target"] == "/hello"

    ok(await cli_async("rm", "--config", str(proxy.config), "app2", cwd=proxy.folder))
    await poll_status(client, url, "app2.localhost", 404)
    await poll_status(client, url, "app1.localhost", 200)
    assert proxy.process.poll() is None, proxy.stderr()
    assert "Traceback" not in proxy.stderr(), proxy.stderr()
    assert await proxy.stop() == 0
