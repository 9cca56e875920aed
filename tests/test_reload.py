"""Hot reload of sites.yaml through the real proxy process: every way editors save, broken and
deleted files, SIGHUP, the change log, and `listen:` edits.

Black-box: the test writes real files under tmp_path and watches what the running proxy
answers on 127.0.0.1, what /api/sites and the index page say, what it logs, and (through the
test's own inotify watch) whether it keeps reading the file after a save was dealt with. Every
wait is a poll with a deadline; the only fixed pauses are SETTLE, long enough after a change for
a second, unwanted reload to show up.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from proxy.config.reload import ConfigWatcher
from tests.support.proxies import LISTENING, Proxy, ProxyFactory
from tests.support.rawhttp import EchoUpstream
from tests.support.reloading import (
    OWN,
    addr,
    api_sites,
    assert_healthy,
    assert_routed,
    config_error,
    fetch,
    save_delete_recreate,
    save_in_place,
    save_rename_over,
    save_truncate_then_write,
    save_vim_style,
    site_hosts,
    sites_text,
    wait_config_error,
    wait_config_ok,
    wait_routed,
)
from tests.support.system import free_port
from tests.support.waiting import DEADLINE, until, until_true, wait_logged, wait_until

# Long enough after a change has shown for a second reload, had there been one, to be logged:
# several debounce periods (0.2 s) plus a slow machine's margin.
SETTLE = 1.0
CHANGE_LINE = re.compile(r"^.*?([+~-]) ([a-z0-9*.-]+\.localhost)\b", re.MULTILINE)


# ---------------------------------------------------------------- probes


async def index_html(client: aiohttp.ClientSession, proxy: Proxy) -> str:
    async with client.get(f"{proxy.base}/", headers={**OWN, "Accept": "text/html"}, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        return await resp.text()


def change_lines(stderr: str) -> list[tuple[str, str]]:
    """Return every (`+`|`-`|`~`, host) change line the proxy logged."""
    return CHANGE_LINE.findall(stderr)


# ---------------------------------------------------------------- saves


SAVES = [save_in_place, save_truncate_then_write, save_rename_over, save_delete_recreate, save_vim_style]


@pytest.mark.parametrize("save", SAVES, ids=[s.__name__.removeprefix("save_") for s in SAVES])
async def test_each_save_style_ends_in_exactly_one_reload_of_the_final_content(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream, save: Callable[[Path, str], Awaitable[None]]
) -> None:
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    await assert_routed(client, proxy, "app1.localhost", upstream_a)

    await save(proxy.config, sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))

    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await wait_logged(proxy, "+ app2.localhost")
    await asyncio.sleep(SETTLE)  # room for a duplicate reload to show itself
    err = proxy.stderr()
    assert err.count("+ app2.localhost") == 1, err
    assert change_lines(err) == [("+", "app2.localhost")], err  # app1 never dropped, not even for a moment
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert await config_error(client, proxy) is None
    assert_healthy(proxy)


async def test_watching_survives_the_file_being_replaced_again_and_again(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """After a rename-over save the watched file is a new inode; later saves of every kind still count."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    sites = {"app1": addr(upstream_a)}
    for i, save in enumerate([save_rename_over, save_rename_over, save_in_place, save_vim_style, save_in_place], start=2):
        sites[f"app{i}"] = addr(upstream_b)
        await save(proxy.config, sites_text(sites))
        await wait_routed(client, proxy, f"app{i}.localhost", upstream_b)
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert_healthy(proxy)


async def test_the_log_says_what_changed(start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream) -> None:
    """`+ host -> target` for an added site, `- host` for a removed one, `~ host: old -> new` for a changed
    one (a site written as a bare port shown as that port); unchanged sites are not mentioned."""
    old_port, new_port, added_port = free_port(), free_port(), free_port()
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a), "api": old_port, "web": addr(upstream_a)}))
    await save_rename_over(proxy.config, sites_text({"api": new_port, "web": addr(upstream_a), "app3": f"127.0.0.1:{added_port}"}))

    expected = [f"+ app3.localhost -> 127.0.0.1:{added_port}", "- app1.localhost", f"~ api.localhost: {old_port} -> {new_port}"]
    for line in expected:
        await wait_logged(proxy, line)
    await asyncio.sleep(SETTLE)
    err = proxy.stderr()
    for line in expected:
        assert err.count(line) == 1, f"{line!r} logged {err.count(line)} times:\n{err}"
    assert sorted(change_lines(err)) == [("+", "app3.localhost"), ("-", "app1.localhost"), ("~", "api.localhost")], err
    assert (await fetch(client, proxy.base, "app1.localhost")).status == 404
    await assert_routed(client, proxy, "web.localhost", upstream_a)
    assert_healthy(proxy)


# ---------------------------------------------------------------- broken, empty and deleted files


BROKEN_BAD_PORT = textwrap.dedent(
    """\
    sites:
      app1: {app1}
      api: 300o
    """
)


async def test_a_broken_save_keeps_serving_and_shows_the_error_until_a_good_save(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """The FILE:LINE:COL line is logged once (a later touch does not repeat it), shown in /api/sites
    and on the index page; a good save clears it and takes effect, so watching did not stop."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    await save_in_place(proxy.config, BROKEN_BAD_PORT.format(app1=addr(upstream_a)))

    error = await wait_config_error(client, proxy)
    file = (await api_sites(client, proxy))["config"]
    assert file.endswith("sites.yaml")
    location = re.search(rf"{re.escape(file)}:3:(\d+): \S", error)
    assert location, f"config_error does not point at line 3 of {file}: {error!r}"
    first_line = error.splitlines()[0]
    await wait_logged(proxy, first_line)

    await assert_routed(client, proxy, "app1.localhost", upstream_a)  # the last good config serves
    assert site_hosts(await api_sites(client, proxy)) == ["app1.localhost"]
    page = await index_html(client, proxy)
    assert f"{file}:3:{location.group(1)}" in page and "300o" in page, page

    os.utime(proxy.config)  # an event without an edit (touch) must not repeat the message
    await asyncio.sleep(SETTLE)
    assert proxy.stderr().count(first_line) == 1, proxy.stderr()

    await save_in_place(proxy.config, sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    await wait_config_ok(client, proxy)
    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    assert "300o" not in await index_html(client, proxy)  # the error is gone from the page
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert_healthy(proxy)


async def test_every_kind_of_broken_file_keeps_the_last_good_config(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """A YAML syntax error, an out-of-range port, an unknown key and an empty file, one after the other:
    each is reported with FILE:LINE:COL while app1 keeps answering."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    good = sites_text({"app1": addr(upstream_a)})
    broken = {
        "yaml syntax": (good + "  app2: [1, 2\n", None),
        "port out of range": (good + "  app2: 99999\n", 3),
        "unknown key": (good + "  app2:\n    upstrem: 4000\n", 4),
        "empty file": ("", None),
    }
    previous: str | None = None
    for kind, (text, line) in broken.items():
        await save_in_place(proxy.config, text)
        error = await wait_config_error(client, proxy, other_than=previous)
        assert re.search(r"sites\.yaml:\d+:\d+: \S", error), f"{kind}: no FILE:LINE:COL in {error!r}"
        if line is not None:
            assert re.search(rf"sites\.yaml:{line}:\d+: ", error), f"{kind}: expected line {line} in {error!r}"
        await assert_routed(client, proxy, "app1.localhost", upstream_a)
        assert site_hosts(await api_sites(client, proxy)) == ["app1.localhost"], kind
        previous = error

    await save_in_place(proxy.config, sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    await wait_config_ok(client, proxy)
    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    assert "- app1.localhost" not in proxy.stderr()
    assert_healthy(proxy)


async def test_an_empty_file_mid_save_does_not_drop_routes(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """The file stays empty long enough for the watcher to read it; app1 answers throughout."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    with open(proxy.config, "w") as f:
        f.flush()
        loop = asyncio.get_running_loop()
        empty_until = loop.time() + SETTLE  # several debounce periods: the empty file is surely read
        requests = 0
        while loop.time() < empty_until:
            await assert_routed(client, proxy, "app1.localhost", upstream_a)
            requests += 1
            await asyncio.sleep(0.02)
        assert site_hosts(await api_sites(client, proxy)) == ["app1.localhost"]
        f.write(sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    assert requests > 5

    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await wait_config_ok(client, proxy)
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert "- app1.localhost" not in proxy.stderr()
    assert_healthy(proxy)


async def test_deleting_the_file_keeps_the_last_good_config_and_recreating_it_reloads(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    offset = len(proxy.stderr())
    proxy.config.unlink()

    def says_deleted() -> bool:
        return bool(re.search(r"delet|missing|removed|not found|no such file|does not exist", proxy.stderr()[offset:], re.IGNORECASE))

    await until_true(says_deleted, lambda: f"stderr saying the config file was deleted\n{proxy.stderr()}")
    assert await wait_config_error(client, proxy)
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert site_hosts(await api_sites(client, proxy)) == ["app1.localhost"]
    assert "- app1.localhost" not in proxy.stderr()

    proxy.config.write_text(sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await wait_config_ok(client, proxy)
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert_healthy(proxy)


class OpenCounter(FileSystemEventHandler):
    """Counts, from the test's own inotify watch, how often any process opens one file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)
        self.opens = 0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "opened" and os.fsdecode(event.src_path) == self.path:
            self.opens += 1


async def opens_during(path: Path, seconds: float) -> int:
    """Return how many times path was opened during the next `seconds` (the test itself stays out)."""
    counter = OpenCounter(path)
    observer = Observer()
    observer.schedule(counter, str(path.parent), recursive=False)
    observer.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        observer.stop()
        await asyncio.to_thread(observer.join, 5)
    return counter.opens


async def test_the_proxy_goes_quiet_after_a_reload_and_after_a_broken_save(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """Once a save has been dealt with, nothing reads sites.yaml again until the next save: reading the
    file must not itself count as a change (a reload loop would re-read it forever)."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    await save_in_place(proxy.config, sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await asyncio.sleep(SETTLE / 2)  # the debounced reload, and any check right after it, are over
    assert await opens_during(proxy.config, SETTLE) == 0, "the proxy keeps re-reading an unchanged sites.yaml after a reload"

    await save_in_place(proxy.config, sites_text({"app1": addr(upstream_a), "app2": "300o"}))
    await wait_config_error(client, proxy)
    await asyncio.sleep(SETTLE / 2)
    assert await opens_during(proxy.config, SETTLE) == 0, "the proxy keeps re-reading an unchanged, broken sites.yaml"
    await assert_routed(client, proxy, "app2.localhost", upstream_b)


# ---------------------------------------------------------------- SIGHUP


async def test_sighup_with_an_unchanged_file_changes_nothing(start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream) -> None:
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    for _ in range(3):
        proxy.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE)
    assert_healthy(proxy)  # SIGHUP's default action would have killed it
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert change_lines(proxy.stderr()) == [], proxy.stderr()
    assert await config_error(client, proxy) is None


async def test_sighup_reloads_a_change_the_watcher_cannot_see(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream, tmp_path: Path
) -> None:
    """The file is rewritten through a hard link in another folder: inotify on the config's folder
    reports nothing, so only SIGHUP can make the proxy read it. (A polling watcher would see it
    too; the test then still passes.)"""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "same-inode.yaml"
    os.link(proxy.config, link)
    with open(link, "r+") as f:  # same inode, no new file in the watched folder
        f.write(sites_text({"app1": addr(upstream_a), "app2": addr(upstream_b)}))
    proxy.process.send_signal(signal.SIGHUP)

    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await wait_logged(proxy, "+ app2.localhost")
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    await asyncio.sleep(SETTLE)
    assert proxy.stderr().count("+ app2.localhost") == 1, proxy.stderr()
    assert_healthy(proxy)


# ---------------------------------------------------------------- upstream state


async def test_up_and_down_state_of_unchanged_upstreams_survives_a_reload(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    dead = free_port()
    sites = {"app1": addr(upstream_a), "dead": f"127.0.0.1:{dead}"}
    proxy = await start_proxy(sites_text(sites))
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert (await fetch(client, proxy.base, "dead.localhost")).status == 502

    def states(document: dict[str, Any]) -> dict[str, tuple[bool | None, str]]:
        out = {}
        for site in document["sites"]:
            for route in site["routes"]:
                for upstream in route.get("upstreams", []):
                    out[site["host"]] = (upstream["up"], upstream["error"])
        return out

    before = states(await api_sites(client, proxy))
    assert before["app1.localhost"][0] is True and before["dead.localhost"][0] is False, before

    await save_rename_over(proxy.config, sites_text({**sites, "app2": addr(upstream_b)}))

    async def reloaded() -> dict[str, Any] | None:
        document = await api_sites(client, proxy)
        return document if "app2.localhost" in site_hosts(document) else None

    after = states(await until(reloaded, "app2 listed in /api/sites"))
    assert after["app1.localhost"] == before["app1.localhost"]
    assert after["dead.localhost"] == before["dead.localhost"]
    assert after["app2.localhost"][0] is None  # never tried yet


# ---------------------------------------------------------------- listen addresses


@pytest.fixture
def start_proxy_from_file(start_proxy: ProxyFactory) -> Callable[[str], Awaitable[Proxy]]:
    """Start the proxy without --http, so the file's `listen:` rules."""

    async def start(text: str) -> Proxy:
        return await start_proxy(text, http=None)

    return start


def listen_text(port: int, sites: dict[str, Any]) -> str:
    return f'listen:\n  http: "127.0.0.1:{port}"\n' + sites_text(sites)


async def own_page_answers(client: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with client.get(f"http://127.0.0.1:{port}/api/sites", headers=OWN, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as resp:
            return resp.status == 200
    except (aiohttp.ClientConnectionError, TimeoutError):
        return False


async def test_a_new_listen_port_is_bound_or_the_old_one_kept_with_a_restart_note(
    start_proxy_from_file: Callable[[str], Awaitable[Proxy]], client: aiohttp.ClientSession, upstream_a: EchoUpstream
) -> None:
    """Either the new port answers and a new `listening on` line is printed, or the old port keeps
    answering and stderr says a restart is needed. Never listening on nothing."""
    old, new = free_port(), free_port()
    proxy = await start_proxy_from_file(listen_text(old, {"app1": addr(upstream_a)}))
    assert proxy.base == f"http://127.0.0.1:{old}", proxy.stdout()
    offset = len(proxy.stderr())

    await save_rename_over(proxy.config, listen_text(new, {"app1": addr(upstream_a)}))

    async def outcome() -> str | None:
        if f"listening on http://127.0.0.1:{new}" in proxy.stdout() and await own_page_answers(client, new):
            return "rebound"
        if "restart" in proxy.stderr()[offset:].lower() and await own_page_answers(client, old):
            return "kept, restart needed"
        return None

    result: str = await until(outcome, lambda: f"port {new} bound (or a restart note)\n{proxy.stdout()}\n{proxy.stderr()}")
    port = new if result == "rebound" else old
    answer = await fetch(client, f"http://127.0.0.1:{port}", "app1.localhost")
    assert (answer.status, answer.upstream) == (200, "A")
    assert_healthy(proxy)


async def test_a_listen_port_in_use_keeps_the_old_listener_and_says_so(
    start_proxy_from_file: Callable[[str], Awaitable[Proxy]], client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    old = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proxy = await start_proxy_from_file(listen_text(old, {"app1": addr(upstream_a)}))
        offset = len(proxy.stderr())

        await save_in_place(proxy.config, listen_text(busy, {"app1": addr(upstream_a), "app2": addr(upstream_b)}))

        await until_true(lambda: str(busy) in proxy.stderr()[offset:], lambda: f"stderr naming port {busy}\n{proxy.stderr()}")
        await asyncio.sleep(SETTLE)
        assert await own_page_answers(client, old), f"port {old} closed although {busy} could not be bound\n{proxy.stderr()}"
        assert_healthy(proxy)


async def test_after_a_failed_move_the_old_listen_port_can_be_written_back(
    start_proxy_from_file: Callable[[str], Awaitable[Proxy]], client: aiohttp.ClientSession, upstream_a: EchoUpstream
) -> None:
    """Undoing a listen change that could not be applied is quiet, and a later move still works."""
    old, later = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proxy = await start_proxy_from_file(listen_text(old, {"app1": addr(upstream_a)}))
        await save_in_place(proxy.config, listen_text(busy, {"app1": addr(upstream_a)}))
        await until_true(lambda: "cannot move the listener" in proxy.stderr(), lambda: f"a warning about port {busy}\n{proxy.stderr()}")

        await save_in_place(proxy.config, listen_text(old, {"app1": addr(upstream_a), "app2": addr(upstream_a)}))
        await until_true(lambda: "+ app2.localhost" in proxy.stderr(), lambda: f"the reload adding app2\n{proxy.stderr()}")
        await asyncio.sleep(SETTLE)
        assert proxy.stderr().count("cannot move the listener") == 1, proxy.stderr()
        assert await own_page_answers(client, old)

        await save_in_place(proxy.config, listen_text(later, {"app1": addr(upstream_a)}))
        await until_true(lambda: f"listening on http://127.0.0.1:{later}" in proxy.stdout(), lambda: f"a move to {later}\n{proxy.stdout()}{proxy.stderr()}")
        assert await own_page_answers(client, later)
        assert_healthy(proxy)


async def test_listen_in_the_file_is_ignored_when_http_is_given_on_the_command_line(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession, upstream_a: EchoUpstream, upstream_b: EchoUpstream
) -> None:
    """The rest of the file still reloads; the proxy notes --http wins and does not bind the file's port."""
    proxy = await start_proxy(sites_text({"app1": addr(upstream_a)}))
    offset = len(proxy.stderr())
    elsewhere = free_port()

    await save_rename_over(proxy.config, listen_text(elsewhere, {"app1": addr(upstream_a), "app2": addr(upstream_b)}))

    await wait_routed(client, proxy, "app2.localhost", upstream_b)
    await until_true(lambda: "--http" in proxy.stderr()[offset:], lambda: f"a note that --http overrides listen.http\n{proxy.stderr()}")
    assert not await own_page_answers(client, elsewhere), f"the proxy bound {elsewhere} although --http was given"
    assert LISTENING.findall(proxy.stdout()) == proxy.urls, proxy.stdout()
    await assert_routed(client, proxy, "app1.localhost", upstream_a)
    assert_healthy(proxy)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: elsewhere a save may only be seen as a plain write")
async def test_writes_to_other_files_in_the_folder_do_not_wake_the_watcher(tmp_path: Path) -> None:
    """A log appended to next to sites.yaml must not cost the proxy a thread wake-up per write."""
    config = tmp_path / "sites.yaml"
    config.write_text("sites:\n  app1: 3000\n")
    seen: list[FileSystemEvent] = []
    reloads: list[None] = []

    class CountingWatcher(ConfigWatcher):
        def on_any_event(self, event: FileSystemEvent) -> None:
            seen.append(event)
            super().on_any_event(event)

    watcher = CountingWatcher(str(config), asyncio.get_running_loop(), lambda: reloads.append(None))
    watcher.start()
    try:
        with open(tmp_path / "app.log", "a") as log_file:  # held open, as a logger holds its file
            for i in range(200):
                log_file.write(f"line {i}\n")
                log_file.flush()
        await asyncio.sleep(0.5)
        about_the_log = [e.event_type for e in seen if os.fsdecode(e.src_path).endswith("app.log")]
        assert len(about_the_log) <= 2, about_the_log  # created and closed, not one per write
        config.write_text("sites:\n  app1: 3001\n")  # a save is still seen
        await wait_until(lambda: reloads, 2.5)
        assert reloads, "the save of sites.yaml was not noticed"
    finally:
        watcher.stop()
