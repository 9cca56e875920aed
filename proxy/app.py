"""`run`: the proxy's objects wired together, started, reloaded on change and on SIGHUP, stopped on SIGINT/SIGTERM.

With cli.py, the only module that prints: the `listening on` lines, the sites and the stop notice.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from proxy.config.load import certs_folder, load_config
from proxy.config.model import Config
from proxy.config.reload import ConfigWatcher, Listening, Reloader
from proxy.forwarding.pages import site_url
from proxy.frontends.http1 import aiohttp_internals
from proxy.frontends.http1.connection import connection_cap, raise_open_file_limit
from proxy.server import ProxyServer
from proxy.tls.ca import load_or_create_ca
from proxy.tls.leaves import LeafCache

EXIT_OK, EXIT_INTERRUPTED = 0, 1


def _warn_if_slow_parser() -> None:
    """Warn loudly when aiohttp runs its pure-Python HTTP parser (slower, and not the audited one)."""
    if not aiohttp_internals.parses_in_c():
        logging.getLogger("proxy").warning(
            "WARNING: aiohttp is using its pure-Python HTTP parser (AIOHTTP_NO_EXTENSIONS set, or no wheel "
            "for this platform). Requests will be slower and parsed by less-tested code; "
            "reinstall aiohttp from a wheel and unset AIOHTTP_NO_EXTENSIONS."
        )


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    _warn_if_slow_parser()
    config = load_config(args.config)
    address = args.http or config.listen_http
    if args.http is not None and "http" in config.listen_keys and args.http != config.listen_http:
        logging.getLogger("proxy").info("--http %s overrides listen.http (%s) in %s", args.http, config.listen_http, config.file)
    https_address = None if args.no_https else (args.https or config.listen_https)
    leaves = LeafCache(load_or_create_ca(args.certs or certs_folder(args.config))[0]) if https_address is not None else None
    max_connections = connection_cap(raise_open_file_limit())
    server = ProxyServer(config, leaves=leaves, show_secrets=args.show_secrets, max_connections=max_connections)
    listeners = await server.start(address, https_address, allow_remote=args.allow_remote)

    loop = asyncio.get_running_loop()
    overridden = frozenset(key for key, given in (("http", args.http is not None), ("https", args.https is not None or args.no_https)) if given)
    reloader = Reloader(server, args.config, overridden=overridden, allow_remote=args.allow_remote, on_listening=_print_listening)
    reloads: set[asyncio.Task[None]] = set()

    def reload_soon(reason: str, force: bool = False) -> None:
        task = loop.create_task(reloader.reload(reason, force=force))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait for the grace period
            print("stopping now", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, reload_soon, "SIGHUP", True)

    watcher = ConfigWatcher(args.config, loop, lambda: reload_soon("file changed"))
    watcher.start()
    _tune_garbage_collector()
    logging.getLogger("proxy").info("event loop: %s", "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio")
    reload_soon("changed while starting")  # an edit between the first read and the watch; no-op otherwise
    # Only now say we are listening: whoever waits for this line may edit the file or signal at once.
    _print_listening(listeners)
    _print_sites(config, server.port_of("http"), server.port_of("https"))
    try:
        await stop.wait()
    finally:
        watcher.stop()
    print("stopping: finishing requests in flight (up to 5 s; press Ctrl-C again to stop now)", file=sys.stderr, flush=True)
    await server.stop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # Past this point the loop is closing; a late signal must not land in a closed loop.
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return EXIT_OK


def _tune_garbage_collector() -> None:
    """Make the cyclic collector cheap for a server that allocates briefly-lived objects per request.

    Requests leave almost no cyclic garbage, but each allocates enough objects (kept across awaits)
    that Python's default threshold (700) starts a collection every few requests, and every tenth
    pass of the older generations walks the whole heap: all of aiohttp and the inspector's kept
    exchanges. That cost about 15 % of the CPU per small proxied request. Everything alive once
    started (modules, config, certificates) is set aside with gc.freeze(), and passes run less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5000, 50, 100)


def _print_listening(listeners: Sequence[Listening]) -> None:
    for listener in listeners:
        print(f"listening on {listener.url}", flush=True)


def _print_sites(config: Config, http_port: int | None, https_port: int | None) -> None:
    if not config.sites:
        print(f"no sites in {config.file} yet: add one, for example `app1: 3000`", flush=True)
        return
    rows = []
    for site in config.sites:
        urls = [site_url(site, "http", http_port) or site.host]
        if https_port is not None and not site.is_wildcard:
            urls.append(site_url(site, "https", https_port) or "")
        rows.append(("  ".join(urls), ", ".join(site.target_lines())))
    width = max(len(line) for line, _ in rows)
    print("sites:")
    for line, target in rows:
        print(f"  {line.ljust(width)}  ->  {target}")
    print(f"  all sites: http://localhost:{http_port}/", flush=True)
