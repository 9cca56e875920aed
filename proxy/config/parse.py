"""sites.yaml text -> one frozen Config, every value knowing its FILE:LINE:COL.

Pure: no sockets, no event loop. The only outside questions, whether a static root or a
certificate file is usable, are asked through the functions the caller passes in (load.py
passes the disk).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config.model import DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, Config, ListenAddress, Route, Site, SiteTLS, StaticRoot, Target, Upstream, Upstreams
from proxy.errors import ConfigError, ConfigErrors, ListenError, Mark
from proxy.names import DNS_LABEL, OWN_HOSTS

try:  # libyaml is ~10x faster on big files; both keep node positions.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

TOP_KEYS = ("listen", "sites")
LISTEN_KEYS = ("http", "https")
UPSTREAM_OPTIONS = ("preserve_host", "connect_timeout", "verify")
SITE_ONLY_KEYS = ("tls", "https_redirect", "inspect")
SITE_KEYS = ("upstream", "root", "spa", "routes", *UPSTREAM_OPTIONS, *SITE_ONLY_KEYS)
ROUTE_KEYS = ("upstream", "root", "spa", "routes", *UPSTREAM_OPTIONS, "strip_prefix")
TLS_KEYS = ("cert", "key")


def _canonical_ip(host: str) -> str | None:
    """Return host as a canonical IP address, or None if it is not one.

    inet_aton accepts the legacy forms the OS accepts too ("0", "127.1", "0x7f.1"),
    so "0:0" is seen for what it is: every interface.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def parse_listen_address(text: str) -> ListenAddress:
    """Return the address for `PORT`, `HOST:PORT` or `[IPv6]:PORT`; raise ListenError."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return ListenAddress(None, _listen_port(text, text))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ListenError(f"{text!r}: write an IPv6 listen address as [::1]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ListenError(f"{text!r} is not PORT, HOST:PORT or [IPv6]:PORT (for example 7080 or 127.0.0.1:7080)")
    port_number = _listen_port(port, text)
    if host.lower() == "localhost":
        return ListenAddress(None, port_number)
    ip = _canonical_ip(host)
    if ip is None:
        raise ListenError(f"{text!r}: listen on an IP address such as 127.0.0.1 or [::1], not {host!r}")
    return ListenAddress(ip, port_number)


def _listen_port(port: str, whole: str) -> int:
    # isdigit() alone accepts "²", which int() refuses.
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ListenError(f"{whole!r}: the port must be a number from 0 to 65535")
    return int(port)


def normalize_site_name(name: str) -> str:
    """Return the host a sites.yaml key stands for: lower case, `.localhost` added when dotless."""
    host = name.strip().lower().rstrip(".")
    if "." not in host and host not in ("*", "localhost") and ":" not in host:
        host += ".localhost"
    return host


# ---------------------------------------------------------------- parsing


RootChecker = Callable[[str], "str | None"]
FileChecker = Callable[[str], "str | None"]


def parse_config(
    text: str,
    file: str,
    *,
    folder: str | None = None,
    check_root: RootChecker = lambda path: None,
    check_file: FileChecker = lambda path: None,
) -> Config:
    """Return the Config that sites.yaml text describes; raise ConfigErrors listing every problem.

    `folder` anchors relative roots (default: the file's folder); `check_root(abs_path)` returns
    a problem with a static root in words, or None.
    """
    parser = _Parser(file, folder or os.path.dirname(os.path.abspath(file)), check_root, check_file)
    config = parser.parse(text)
    if parser.errors:
        raise ConfigErrors(parser.errors)
    assert config is not None
    return dataclasses.replace(config, source_digest=text_digest(text))


def text_digest(text: str) -> str:
    """Return the digest reload compares to tell an edit from an event that changed nothing."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Parser:
    def __init__(self, file: str, folder: str, check_root: RootChecker, check_file: FileChecker) -> None:
        self.file = file
        self.folder = folder
        self.check_root = check_root
        self.check_file = check_file
        self.errors: list[ConfigError] = []

    # -- plumbing

    def mark(self, node: Node) -> Mark:
        return Mark(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node: Node, message: str) -> None:
        self.errors.append(ConfigError(self.mark(node), message))

    def mapping_items(self, node: MappingNode, known: tuple[str, ...], where: str) -> dict[str, tuple[ScalarNode, Node]]:
        """Return key -> (key node, value node); report duplicate and unknown keys."""
        items: dict[str, tuple[ScalarNode, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.value == "":
                self.error(key_node, f"a key in {where} must be a plain name")
                continue
            key = str(key_node.value)
            if key in items:
                first = self.mark(items[key][0])
                self.error(key_node, f"duplicate key {key!r} (first at line {first.line}); YAML would keep only one, so remove or rename one")
                continue
            if key not in known:
                self.error(key_node, f"unknown key {key!r} in {where}{_did_you_mean(key, known)}; known keys: {', '.join(known)}")
                continue
            items[key] = (key_node, value_node)
        return items

    def scalar(self, node: Node) -> object:
        """Return the Python value of a scalar node (int, float, bool, str or None)."""
        if not isinstance(node, ScalarNode):
            return node
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except (yaml.YAMLError, ValueError, KeyError, TypeError):
            # `!foo 3000` or `!!int abc`: the caller judges the text as written and says what is wrong.
            return node.value

    def address_text(self, node: Node) -> object:
        """Return a port or address as the user typed it.

        YAML 1.1 reads `010` as octal 8 and `80:80` as base-60 4880; a port means what it looks like.
        """
        value = self.scalar(node)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(node, ScalarNode):
            return node.value
        return value

    # -- top level

    def parse(self, text: str) -> Config | None:
        try:
            root = yaml.compose(text, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            self.errors.append(ConfigError(Mark(self.file, line, col), f"YAML syntax error: {problem}; check indentation and quoting on this line"))
            return None
        except yaml.reader.ReaderError as exc:  # a control character: it knows its offset, not its line
            offset = exc.position
            if not (offset < len(text) and ord(text[offset]) == exc.character):  # libyaml counts UTF-8 bytes
                offset = len(text.encode("utf-8")[:offset].decode("utf-8", "ignore"))
            line = text.count("\n", 0, offset) + 1
            col = offset - (text.rfind("\n", 0, offset) + 1) + 1
            self.errors.append(ConfigError(Mark(self.file, line, col), f"unacceptable character #x{exc.character:04x} (a control character): remove it"))
            return None
        except yaml.YAMLError as exc:
            self.errors.append(ConfigError(Mark(self.file, 1, 1), "YAML error: " + " ".join(str(exc).split())))
            return None
        if root is None or (isinstance(root, ScalarNode) and root.value == ""):
            self.errors.append(ConfigError(Mark(self.file, 1, 1), "the file is empty: add a `sites:` mapping, for example `sites: {app1: 3000}`"))
            return None
        if not isinstance(root, MappingNode):
            self.error(root, "the top level must be a mapping with `sites:` (and optionally `listen:`)")
            return None
        items = self.mapping_items(root, TOP_KEYS, "the top level")
        listen = {"http": ListenAddress(None, DEFAULT_HTTP_PORT), "https": ListenAddress(None, DEFAULT_HTTPS_PORT)}
        listen_keys: frozenset[str] = frozenset()
        if "listen" in items:
            parsed = self.parse_listen(items["listen"][1])
            listen.update(parsed)
            listen_keys = frozenset(parsed)
        sites: tuple[Site, ...] = ()
        if "sites" in items:
            sites = self.parse_sites(items["sites"][1])
        elif not self.errors:
            self.error(root, "no `sites:` mapping: add one, for example `sites: {app1: 3000}`")
        return Config(self.file, self.folder, listen["http"], sites, listen["https"], listen_keys)

    def parse_listen(self, node: Node) -> dict[str, ListenAddress]:
        """Return the listen addresses the file sets, by key (http, https)."""
        if not isinstance(node, MappingNode):
            self.error(node, "`listen:` must be a mapping such as `listen: {http: 7080, https: 7443}`")
            return {}
        parsed: dict[str, ListenAddress] = {}
        for key, (_, value_node) in self.mapping_items(node, LISTEN_KEYS, "listen").items():
            value = self.address_text(value_node)
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                self.error(
                    value_node, f"`{key}:` must be PORT, HOST:PORT or [IPv6]:PORT, for example {DEFAULT_HTTP_PORT if key == 'http' else DEFAULT_HTTPS_PORT}"
                )
                continue
            try:
                parsed[key] = parse_listen_address(str(value))
            except ListenError as exc:
                self.error(value_node, str(exc))
        return parsed

    def parse_sites(self, node: Node) -> tuple[Site, ...]:
        if isinstance(node, ScalarNode) and node.value in ("", "~", "null"):
            return ()  # every site commented out: the proxy still serves its index page
        if not isinstance(node, MappingNode):
            self.error(node, "`sites:` must be a mapping of host names to targets, for example `app1: 3000`")
            return ()
        sites: list[Site] = []
        seen: dict[str, tuple[str, Mark]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.value == "":
                self.error(key_node, "a site name must be a plain host name such as app1 or app1.localhost")
                continue
            name = str(key_node.value)
            host = self.parse_host(key_node, name)
            if host is None:
                continue
            mark = self.mark(key_node)
            if host in seen:
                first_name, first = seen[host]
                if first_name == name:
                    self.error(key_node, f"duplicate key {name!r} (first at line {first.line}); YAML would keep only one, so remove or rename one")
                else:
                    self.error(key_node, f"{host} is already defined at line {first.line} ({first_name!r} and {name!r} are the same host); remove one of them")
                continue
            seen[host] = (name, mark)
            routes = self.parse_site_value(value_node)
            if routes:
                tls, https_redirect, inspect = self.parse_site_options(value_node)
                sites.append(Site(host, routes, mark, tls, https_redirect, inspect))
        return tuple(sites)

    def parse_host(self, node: ScalarNode, name: str) -> str | None:
        host = normalize_site_name(name)
        if host in OWN_HOSTS or host.strip("[]") in OWN_HOSTS:
            self.error(node, f"{host} is the proxy's own address (its index page); pick another name, such as app.localhost")
            return None
        if _is_ip_literal(host.strip("[]")):
            self.error(node, f"{name!r} is an IP address; a site needs a host name such as app1.localhost")
            return None
        labels = host.split(".")
        for i, label in enumerate(labels):
            if label == "*" and i == 0 and len(labels) > 1:
                continue
            if not DNS_LABEL.match(label):
                hint = " (`*` may only stand alone as the first label, as in *.preview.localhost)" if "*" in label or label == "*" else ""
                if not label.isascii():
                    hint = " (write international names in their xn-- form)"
                self.error(node, f"{name!r} is not a valid host name{hint}")
                return None
        return host

    # -- site and route values

    def parse_site_value(self, node: Node) -> tuple[Route, ...]:
        """Return the routes for one site, longest prefix first."""
        if isinstance(node, MappingNode) and any(getattr(k, "value", None) == "routes" for k, _ in node.value):
            items = self.mapping_items(node, SITE_KEYS, "a site")
            for key in ("upstream", "root", "spa"):
                if key in items:
                    self.error(items[key][0], f"`{key}:` cannot sit beside `routes:`; put it under a route such as `/: ...`")
            defaults = self.upstream_options(items, Upstreams(()))
            return self.parse_routes(items["routes"][1], defaults)
        target = self.parse_target(node, Upstreams(()), SITE_KEYS, "a site")
        if target is None:
            return ()
        return (Route("/", target[0], self.mark(node), strip_prefix=False),)

    def parse_site_options(self, node: Node) -> tuple[SiteTLS | None, bool, bool]:
        """Return a site's own certificate, https_redirect and inspect (keys of the site, not of its routes)."""
        if not isinstance(node, MappingNode):
            return None, False, True
        items: dict[str, tuple[ScalarNode, Node]] = {str(k.value): (k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value in SITE_ONLY_KEYS}
        return self.parse_site_tls(items), self.flag(items, "https_redirect", False), self.flag(items, "inspect", True)

    def parse_site_tls(self, items: dict[str, tuple[ScalarNode, Node]]) -> SiteTLS | None:
        if "tls" not in items:
            return None
        tls_node = items["tls"][1]
        if not isinstance(tls_node, MappingNode):
            self.error(tls_node, "`tls:` must be a mapping such as `tls: {cert: ./app.pem, key: ./app-key.pem}`")
            return None
        tls_items = self.mapping_items(tls_node, TLS_KEYS, "tls")
        paths: dict[str, str] = {}
        for key in TLS_KEYS:
            if key not in tls_items:
                self.error(tls_node, f"`tls:` needs `{key}:` (a PEM file, e.g. made by mkcert)")
                continue
            value_node = tls_items[key][1]
            value = self.scalar(value_node)
            if not isinstance(value, str) or not value:
                self.error(value_node, f"`{key}:` must be a file path")
                continue
            path = os.path.normpath(os.path.join(self.folder, os.path.expanduser(value)))
            problem = self.check_file(path)
            if problem:
                self.error(value_node, problem)
                continue
            paths[key] = path
        if len(paths) < len(TLS_KEYS):
            return None
        return SiteTLS(paths["cert"], paths["key"])

    def parse_routes(self, node: Node, defaults: Upstreams) -> tuple[Route, ...]:
        if not isinstance(node, MappingNode) or not node.value:
            self.error(node, "`routes:` must map path prefixes to targets, for example `/api: 8000`")
            return ()
        routes: dict[str, Route] = {}
        for key_node, value_node in node.value:
            raw = str(getattr(key_node, "value", ""))
            if not raw.startswith("/"):
                self.error(key_node, f"route {raw!r} must be a path starting with /, such as /api")
                continue
            if "?" in raw or "#" in raw or "*" in raw:
                self.error(key_node, f"route {raw!r} must be a plain path prefix (no ?, # or *); /api already covers /api/anything")
                continue
            if any(c.isspace() or not c.isprintable() for c in raw):
                self.error(key_node, f"route {raw!r} contains a space or control character, which no request path can; percent-encode it (%20)")
                continue
            prefix = raw.rstrip("/") or "/"
            if prefix in routes:
                first = routes[prefix].mark
                self.error(key_node, f"route {prefix} is already defined at line {first.line}; remove one of them")
                continue
            parsed = self.parse_target(value_node, defaults, ROUTE_KEYS, f"route {prefix}")
            if parsed is not None:
                target, strip_prefix = parsed
                routes[prefix] = Route(prefix, target, self.mark(key_node), strip_prefix)
        return tuple(sorted(routes.values(), key=lambda r: len(r.prefix), reverse=True))

    def parse_target(self, node: Node, defaults: Upstreams, known: tuple[str, ...], where: str) -> tuple[Target, bool] | None:
        """Return (target, strip_prefix) for a port, address, URL, list or mapping."""
        if isinstance(node, (ScalarNode, SequenceNode)):
            addresses = self.parse_upstream_list(node)
            if addresses is None:
                return None
            return Upstreams(addresses, defaults.preserve_host, defaults.connect_timeout, defaults.verify), False
        if not isinstance(node, MappingNode):
            self.error(node, f"{where} must be a port, host:port, URL, list or mapping")
            return None
        errors_before = len(self.errors)
        items = self.mapping_items(node, known, where)
        if "routes" in items and known == ROUTE_KEYS:
            self.error(items["routes"][0], "routes cannot be nested; list every prefix under the site's `routes:`")
            return None
        strip_prefix = self.flag(items, "strip_prefix", False)
        has_upstream, has_root = "upstream" in items, "root" in items
        if has_upstream and has_root:
            self.error(items["root"][0], "use either `upstream:` or `root:`, not both")
            return None
        if has_root:
            for key in UPSTREAM_OPTIONS:
                if key in items:
                    self.error(items[key][0], f"`{key}:` applies to upstreams, not to a static `root:`")
            root = self.parse_root(items["root"][1])
            spa = self.flag(items, "spa", False)
            return (StaticRoot(root, spa), strip_prefix) if root is not None else None
        if "spa" in items:
            self.error(items["spa"][0], "`spa:` applies only beside `root:` (a folder of static files)")
        if not has_upstream:
            if len(self.errors) == errors_before:  # an unknown key already explained it
                self.error(node, f"{where} needs `upstream:` (a port, address or URL) or `root:` (a folder)")
            return None
        addresses = self.parse_upstream_list(items["upstream"][1])
        options = self.upstream_options(items, defaults)
        if addresses is None:
            return None
        return Upstreams(addresses, options.preserve_host, options.connect_timeout, options.verify), strip_prefix

    def upstream_options(self, items: dict[str, tuple[ScalarNode, Node]], defaults: Upstreams) -> Upstreams:
        preserve_host = self.flag(items, "preserve_host", defaults.preserve_host)
        verify = self.optional_flag(items, "verify")
        if verify is None:
            verify = defaults.verify
        timeout = defaults.connect_timeout
        if "connect_timeout" in items:
            node = items["connect_timeout"][1]
            value = self.scalar(node)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                self.error(node, "`connect_timeout:` must be a number of seconds above 0, for example 5")
            else:
                timeout = float(value)
        return Upstreams((), preserve_host, timeout, verify)

    def flag(self, items: dict[str, tuple[ScalarNode, Node]], key: str, default: bool) -> bool:
        value = self.optional_flag(items, key)
        return default if value is None else value

    def optional_flag(self, items: dict[str, tuple[ScalarNode, Node]], key: str) -> bool | None:
        """Return true/false as written, or None when the key is absent (or wrong, after saying so)."""
        if key not in items:
            return None
        node = items[key][1]
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.error(node, f"`{key}:` must be true or false")
            return None
        return value

    def parse_root(self, node: Node) -> str | None:
        value = self.scalar(node)
        if not isinstance(value, str) or not value:
            self.error(node, "`root:` must be a folder path, for example ./public")
            return None
        path = os.path.normpath(os.path.join(self.folder, os.path.expanduser(value)))
        problem = self.check_root(path)
        if problem:
            self.error(node, problem)
            return None
        return path

    def parse_upstream_list(self, node: Node) -> tuple[Upstream, ...] | None:
        if isinstance(node, SequenceNode):
            if not node.value:
                self.error(node, "the upstream list is empty: give at least one port, address or URL")
                return None
            parsed = [self.parse_upstream(item) for item in node.value]
            if any(u is None for u in parsed):
                return None
            return tuple(u for u in parsed if u is not None)
        upstream = self.parse_upstream(node)
        return None if upstream is None else (upstream,)

    def parse_upstream(self, node: Node) -> Upstream | None:
        if not isinstance(node, ScalarNode):
            self.error(node, "an upstream must be a port, host:port or URL such as 3000, 127.0.0.1:5173 or https://[::1]:8443")
            return None
        value = self.address_text(node)
        try:
            return parse_upstream(value)
        except ValueError as exc:
            self.error(node, str(exc))
            return None


def parse_upstream(value: object) -> Upstream:
    """Return the Upstream for a port, host:port or URL; raise ValueError saying what is wrong."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise ValueError(f"{value!r} is not a port, host:port or URL (for example 3000)")
    text = str(value).strip()
    if isinstance(value, int) or (text.isascii() and text.isdigit()):
        return Upstream("http", "localhost", _upstream_port(text, text))
    if "://" in text:
        return _parse_upstream_url(text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not a port, host:port or URL; write IPv6 as [::1]:4000")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not a port, host:port or URL{_port_typo_hint(text)}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 upstream in brackets, as [::1]:4000")
    return Upstream("http", _upstream_host(host, text), _upstream_port(port, text))


def _parse_upstream_url(text: str) -> Upstream:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: an upstream URL must start with http:// or https:// (WebSockets go through either)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: an upstream URL cannot have a path; paths are forwarded unchanged (see `routes:` and `strip_prefix:`)")
    if parts.username or parts.password:
        raise ValueError(f"{text!r}: credentials in upstream URLs are not supported")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535") from None
    host = parts.hostname or ""
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:  # urlsplit accepts 0, which nothing can be dialed on
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Upstream(scheme, _upstream_host(host, text), port)


def _upstream_host(host: str, whole: str) -> str:
    host = host.strip().lower()
    if not host:
        raise ValueError(f"{whole!r}: the host is missing; write 127.0.0.1:PORT or just the port")
    if host in ("localhost", "localhost."):
        return "localhost"
    ip = _canonical_ip(host)
    if ip is not None and _is_ip_literal(host):
        return ip
    if not all(DNS_LABEL.match(label) for label in host.rstrip(".").split(".")):
        raise ValueError(f"{whole!r}: {host!r} is not a valid host name or IP address")
    return host.rstrip(".")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _upstream_port(port: str, whole: str) -> int:
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{whole!r} is not a port, host:port or URL{_port_typo_hint(port)}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{number} is not a port: ports run from 1 to 65535")
    return number


def _port_typo_hint(text: str) -> str:
    """Return ' (did you mean 3000?)' for "300o" and similar slips, else a usage hint."""
    fixed = text.translate(str.maketrans("oOlI", "0011"))
    if fixed.isascii() and fixed.isdigit() and 1 <= int(fixed) <= 65535:
        return f" (did you mean {int(fixed)}?)"
    return " (for example 3000, 127.0.0.1:5173 or http://[::1]:4000)"


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
