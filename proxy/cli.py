"""Command line: argparse, subcommands, exit codes. The only module that prints.

Exit codes: 0 ok; 1 a negative answer or failed check; 2 a user error (broken config, port in
use, a non-loopback address without --allow-remote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict

from proxy import __version__, app
from proxy.config.edits import add_site, remove_site, write_atomically
from proxy.config.load import certs_folder, disk_root_checker, load_config
from proxy.config.model import Config, ListenAddress
from proxy.config.parse import normalize_site_name, parse_listen_address
from proxy.diagnostics import doctor, ports
from proxy.errors import ConfigErrors, ProxyError
from proxy.tls import trust
from proxy.tls.ca import CA_CERT_FILE, load_or_create_ca
from proxy.tls.leaves import LeafCache

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

    run = with_config(
        commands.add_parser(
            "run",
            help="serve the sites in the config file",
            description="Serve the sites in the config file. Flags given here override the file's `listen:` section.",
        )
    )
    run.add_argument(
        "--http",
        type=_listen_arg,
        metavar="ADDR",
        help="HTTP listen address: PORT (127.0.0.1 and [::1]), HOST:PORT or [::1]:PORT; overrides listen.http in the file (default 7080)",
    )
    run.add_argument(
        "--https", type=_listen_arg, metavar="ADDR", help="HTTPS listen address, same forms as --http; overrides listen.https in the file (default 7443)"
    )
    run.add_argument("--no-https", action="store_true", help="do not start the HTTPS listener")
    run.add_argument("--certs", metavar="DIR", help="folder of the local CA (default: certs/ beside the config file)")
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow listening on addresses other machines can reach (off by default: the proxy forwards to your dev servers)",
    )
    run.add_argument(
        "--show-secrets", action="store_true", help="show Authorization, Cookie and Set-Cookie values in the inspector and its API (redacted by default)"
    )
    run.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop when installed (pip install 'localhost-proxy[fast]'), else asyncio's own (default: auto)",
    )
    with_config(commands.add_parser("check", help="validate the config file: exit 0 if valid, 2 with FILE:LINE:COL lines if not"))
    add = with_config(
        commands.add_parser(
            "add",
            help="add a site to the config file, keeping its comments",
            description="Add NAME -> TARGET to the config file in place (comments and layout kept); a running proxy picks it up.",
        )
    )
    add.add_argument("name", metavar="NAME", help="app1 (meaning app1.localhost), app1.localhost or *.preview.localhost")
    add.add_argument("target", metavar="TARGET", help="3000, 127.0.0.1:5173, http://[::1]:4000, https://127.0.0.1:8443, [8000, 8001] or {root: ./public}")
    add.add_argument("--replace", action="store_true", help="replace the site's target if it is already there")
    rm = with_config(commands.add_parser("rm", help="remove a site from the config file, keeping its comments"))
    rm.add_argument("name", metavar="NAME")
    ca = with_config(commands.add_parser("ca", help="create the local CA if missing; print its path, fingerprint, validity and permitted names"))
    ca.add_argument("--certs", metavar="DIR", help="folder of the local CA (default: certs/ beside the config file)")
    for name, summary in (
        ("trust", "add the local CA to the system store and the browsers' NSS databases, then verify it"),
        ("untrust", "remove the local CA from everywhere trust put it"),
    ):
        trust = with_config(commands.add_parser(name, help=summary))
        trust.add_argument("--certs", metavar="DIR", help="folder of the local CA (default: certs/ beside the config file)")
        trust.add_argument("--nssdb", metavar="DIR", action="append", help="only this NSS database (repeatable) instead of every one found")
        trust.add_argument("--no-system", action="store_true", help="leave the system trust store alone")
        trust.add_argument("--dry-run", action="store_true", help="print the exact commands instead of running them")
    listing = with_config(commands.add_parser("list", help="the sites, their targets, and whether each answers now"))
    listing.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    ports_command = with_config(
        commands.add_parser("ports", help="every TCP listener on loopback (and on all interfaces), which sites route to it, and `add` lines for the rest")
    )
    ports_command.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    who_command = commands.add_parser("who", help="which process listens on PORT: exit 0 if one does, 1 if none")
    who_command.add_argument("port", type=_port_arg, metavar="PORT")
    doctor_command = with_config(commands.add_parser("doctor", help="check the config, ports, upstreams, name resolution and the CA; exit 1 if a check fails"))
    doctor_command.add_argument("--certs", metavar="DIR", help="folder of the local CA (default: certs/ beside the config file)")
    return parser


def _port_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
                return runner.run(app.run(args))
        if args.command in ("add", "rm"):
            return _edit(args)
        if args.command == "list":
            return asyncio.run(_list(args.config, as_json=args.json))
        if args.command == "ca":
            return _ca(args.certs or certs_folder(args.config))
        if args.command in ("trust", "untrust"):
            return _trust(args)
        if args.command == "ports":
            return _ports(args.config, as_json=args.json)
        if args.command == "who":
            return _who(args.port)
        if args.command == "doctor":
            return _doctor(args.config, args.certs)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr, flush=True)  # FILE:LINE:COL lines, one per problem
        if args.command in ("add", "rm"):
            print(f"nothing was written to {args.config}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except ProxyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_NEGATIVE


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return how to make the event loop for `run --loop`; None means asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ProxyError("--loop uvloop: uvloop is not installed; pip install 'localhost-proxy[fast]' (or uvloop), or use --loop asyncio") from None
        return None
    return uvloop.new_event_loop


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("proxy")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    # Access lines come in batches, each line already stamped with its own time (see accesslog.py).
    access = logging.StreamHandler(sys.stderr)
    access.setFormatter(logging.Formatter("%(message)s"))
    access_logger = logging.getLogger("proxy.access")
    access_logger.handlers[:] = [access]
    access_logger.propagate = False


def _check(path: str) -> int:
    config = load_config(path)
    print(f"{path}: ok, {len(config.sites)} site{'s' if len(config.sites) != 1 else ''}")
    return EXIT_OK


def _edit(args: argparse.Namespace) -> int:
    """`add` and `rm`: edit the file in place, validated, written atomically."""
    path = args.config
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": keep CRLF files CRLF
            text = f.read()
    except FileNotFoundError:
        if args.command == "rm":
            raise ProxyError(f"{path} does not exist; nothing to remove") from None
        text = "sites:\n"  # `add` on a new machine starts the file
    if args.command == "add":
        new_text = add_site(text, path, args.name, args.target, replace=args.replace, check_root=disk_root_checker(path))
    else:
        new_text = remove_site(text, path, args.name)
    write_atomically(path, new_text)
    host = normalize_site_name(args.name)
    if args.command == "add":
        print(f"{'set' if args.replace else 'added'} {host} -> {args.target} in {path}")
    else:
        print(f"removed {host} from {path}")
    return EXIT_OK


async def _list(path: str, *, as_json: bool) -> int:
    """`list`: every site with its targets and whether it answers a connect right now."""
    config = load_config(path)
    probes = await ports.probe_sites(config)
    if as_json:
        print(json.dumps([asdict(p) for p in probes], indent=2))
        return EXIT_OK
    if not probes:
        print(f"no sites in {path}")
        return EXIT_OK
    table = [(p.host, ", ".join(p.targets), "up" if p.up else "down") for p in probes]
    widths = [max(len(row[i]) for row in [*table, ("HOST", "TARGET", "STATE")]) for i in range(3)]
    for row in [("HOST", "TARGET", "STATE"), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return EXIT_OK


def _ca(certs: str) -> int:
    """`ca`: make the CA if it is missing and describe it."""
    ca, created = load_or_create_ca(certs)
    certificate = ca.certificate
    print(f"CA certificate: {ca.cert_path}" + (" (created now)" if created else ""))
    print(f"CA key:         {ca.key_path} (mode 600; never share it)")
    print(f"fingerprint:    SHA-256 {ca.fingerprint}")
    print(f"valid:          {certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d}")
    names = ", ".join("localhost (and every *.localhost name)" if n == "localhost" else n for n in ca.permitted_names())
    print(f"permitted:      {names}; it cannot sign for any other name")
    return EXIT_OK


def _trust(args: argparse.Namespace) -> int:
    """`trust` / `untrust`: change the trust stores, then check from the user's side."""
    certs = args.certs or certs_folder(args.config)
    if args.command == "untrust" and not os.path.exists(os.path.join(certs, CA_CERT_FILE)):
        print(f"no CA in {certs}; nothing to remove")
        return EXIT_OK
    local_ca = load_or_create_ca(certs)[0]
    ca = trust.load_ca(local_ca.cert_path)
    user = trust.invoking_user()
    machine = trust.survey_machine(ca, platform=trust.detect_platform(), home=trust.default_home(), nssdbs=args.nssdb, include_system=not args.no_system)
    if args.command == "trust":
        plan = trust.plan_trust(ca, machine, include_system=not args.no_system)
    else:
        plan = trust.plan_untrust(ca, machine, include_system=not args.no_system)
    check_name = "trust-check.localhost"
    return trust.run_plan(
        plan,
        dry_run=args.dry_run,
        out=print,
        is_root=os.geteuid() == 0,
        run_as=user[:2] if user else None,
        system_check=lambda: trust.loopback_handshake(LeafCache(local_ca).context_for(check_name), check_name),
        sudo_command=shlex.join(["sudo", sys.executable, "-m", "proxy", *sys.argv[1:]]),
    )


def _ports(path: str, *, as_json: bool) -> int:
    """`ports`: every local listener, marked with the sites that route to it; works without a config."""
    try:
        config: Config | None = load_config(path)
    except ConfigErrors as exc:
        config = None
        print(f"not marking routed ports: {path} cannot be used:\n{exc}", file=sys.stderr, flush=True)
    listeners, note = ports.tcp_listeners()
    entries = ports.port_entries(listeners, config)
    if as_json:
        print(json.dumps([e.as_json() for e in entries], indent=2))
    elif not entries:
        print("nothing listens on loopback")
    else:
        print("\n".join(ports.port_table(entries)))
    if note or any(e.listener.pid is None for e in entries):
        print(note or f"PID -: {ports.unnamed_note(os.geteuid() == 0)}", file=sys.stderr, flush=True)
    return EXIT_OK


def _who(port: int) -> int:
    """`who PORT`: the process listening on port; exit 1 when none does."""
    listeners, note = ports.tcp_listeners()
    lines = ports.who_lines(port, listeners, is_root=os.geteuid() == 0)
    if not lines:
        print(f"nothing listens on port {port}" + (f" ({note})" if note else ""))
        return EXIT_NEGATIVE
    print("\n".join(lines))
    return EXIT_OK


def _doctor(path: str, certs: str | None) -> int:
    """`doctor`: every check with its verdict and fix; exit 1 when one fails."""
    checks = asyncio.run(doctor.run_checks(path, certs))
    print("\n".join(doctor.check_lines(checks)), flush=True)
    return EXIT_NEGATIVE if doctor.has_failure(checks) else EXIT_OK
