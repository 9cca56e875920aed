"""Host names: how a Host header is read, which names are local, what a DNS label may be. Pure.

One definition of each rule; the config parser, routing, the TLS side and the diagnostics all ask here.
"""

from __future__ import annotations

import functools
import ipaddress
import re

# Names that reach the proxy itself (the dashboard and its API); never usable as a site.
OWN_HOSTS = frozenset({"localhost", "proxy.localhost", "127.0.0.1", "::1", "[::1]"})
# "localhost" is dialed on both: dev servers bind either one (Vite on recent Node: ::1 only).
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
# One DNS label, lower case (RFC 1035, with `_` as service names and dev setups use it).
DNS_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def format_host(host: str) -> str:
    """Return host as it appears before :port (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


@functools.lru_cache(maxsize=1024)  # every request asks; browsers send the same few names over and over
def normalize_host(host_header: str) -> str:
    """Return a Host header's name: lower case, no port, no trailing dot, IPv6 unbracketed.

    Idempotent: odd values ("x:80.", "a . ") are normalized until nothing changes, so every
    caller that normalizes again gets the same name.
    """
    host = _normalize_once(host_header)
    while (again := _normalize_once(host)) != host:  # after the first pass, every change shortens it: this ends
        host = again
    return host


def _normalize_once(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return (host[1 : host.find("]")] if "]" in host else host).rstrip(".")
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".").strip()


def is_under_localhost(name: str) -> bool:
    """Return whether a lower-case name is localhost or one of its subdomains (RFC 6761 6.3)."""
    return name == "localhost" or name.endswith(".localhost")


def is_loopback_ip(text: str) -> bool:
    """Return whether text is an IP address in 127.0.0.0/8 or ::1."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def is_local_name(host: str) -> bool:
    """Return whether a normalized host is localhost, under .localhost, or a loopback IP address."""
    return is_under_localhost(host) or is_loopback_ip(host)


def is_dns_name(name: str) -> bool:
    """Return whether every label of a lower-case name (a trailing dot allowed) is a valid DNS label."""
    return all(DNS_LABEL.match(label) for label in name.rstrip(".").split("."))
