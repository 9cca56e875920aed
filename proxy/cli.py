"""Command line: argparse, subcommands, exit codes. The only module that prints.

Exit codes: 0 ok; 1 a negative answer or failed check; 2 a user error (broken config, port in
use, a non-loopback address without --allow-remote).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from proxy import __version__
from proxy.config import Config, ListenAddress, load_config, parse_listen_address
from proxy.errors import ConfigErrors, ProxyError
from proxy.server import ProxyServer

EXIT_OK, EXIT_NEGATIVE, EXIT_USER_ERROR = 0, 1, 2


def _listen_arg(text: str) -> ListenAddress:
    try:
        return parse_listen_address(text)
    except ProxyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localhost-proxy",
        description="Reach local dev servers by name: http://app1.localhost:7080 instead of http://localhost:3000.",
    )
    parser.add_argument("--version", action="version", version=f"localhost-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default="./sites.yaml", metavar="FILE", help="the sites file (default: ./sites.yaml)")
        return p

    run = with_config(commands.add_parser("run", help="serve the sites in the config file", description="Serve the sites in the config file. Flags given here override the file's `listen:` section."))
    run.add_argument("--http", type=_listen_arg, metavar="ADDR", help="HTTP listen address: PORT (127.0.0.1 and [::1]), HOST:PORT or [::1]:PORT; overrides listen.http in the file (default 7080)")
    run.add_argument("--no-https", action="store_true", help="do not start the HTTPS listener")
    run.add_argument("--allow-remote", action="store_true", help="allow listening on addresses other machines can reach (off by default: the proxy forwards to your dev servers)")
    with_config(commands.add_parser("check", help="validate the config file: exit 0 if valid, 2 with FILE:LINE:COL lines if not"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            return asyncio.run(_run(args))
    except ConfigErrors as exc:
        print(exc, file=sys.stderr, flush=True)  # FILE:LINE:COL lines, one per problem
        return EXIT_USER_ERROR
    except ProxyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_NEGATIVE


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("proxy")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _check(path: str) -> int:
    config = load_config(path)
    print(f"{path}: ok, {len(config.sites)} site{'s' if len(config.sites) != 1 else ''}")
    return EXIT_OK


def _warn_if_slow_parser() -> None:
    """Warn loudly when aiohttp runs its pure-Python HTTP parser (slower, and not the audited one)."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        logging.getLogger("proxy").warning(
            "WARNING: aiohttp is using its pure-Python HTTP parser (AIOHTTP_NO_EXTENSIONS set, or no wheel "
            "for this platform). Requests will be slower and parsed by less-tested code; "
            "reinstall aiohttp from a wheel and unset AIOHTTP_NO_EXTENSIONS."
        )


async def _run(args: argparse.Namespace) -> int:
    _warn_if_slow_parser()
    config = load_config(args.config)
    address = args.http or config.listen_http
    if args.http is not None and "http" in config.listen_keys and args.http != config.listen_http:
        logging.getLogger("proxy").info("--http %s overrides listen.http (%s) in %s", args.http, config.listen_http, config.file)
    server = ProxyServer(config)
    listeners = await server.start(address, allow_remote=args.allow_remote)
    for listener in listeners:
        print(f"listening on {listener.url}", flush=True)
    _print_sites(config, listeners[0].port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait for the grace period
            print("stopping now", file=sys.stderr, flush=True)
            os._exit(EXIT_NEGATIVE)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    print("stopping: finishing requests in flight (up to 5 s; press Ctrl-C again to stop now)", file=sys.stderr, flush=True)
    await server.stop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Past this point the loop is closing; a late signal must not land in a closed loop.
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return EXIT_OK


def _print_sites(config: Config, port: int) -> None:
    from proxy.dashboard.pages import site_url, targets_of

    if not config.sites:
        print(f"no sites in {config.file} yet: add one, for example `app1: 3000`", flush=True)
        return
    rows = [(site_url(site, "http", port) or site.host, ", ".join(targets_of(site))) for site in config.sites]
    width = max(len(url) for url, _ in rows)
    print("sites:", flush=False)
    for url, target in rows:
        print(f"  {url.ljust(width)}  ->  {target}")
    print(f"  all sites: http://localhost:{port}/", flush=True)
