"""HTTPS through the real proxy process: the local CA it makes, the leaves it mints per SNI name,
and real TLS clients (Python ssl, aiohttp, curl, openssl) that trust only that CA.

Every CA lives under tmp_path (--certs), so nothing here writes into the checkout or touches this
machine's trust store. Without CI set a missing curl or openssl skips its test; with CI it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.certs import san_values, self_signed_files, trusting_nothing
from tests.support.proxies import LISTENING, LISTENING_HTTPS, PROXY, Proxy, ProxyFactory, spawn, write_sites
from tests.support.rawhttp import EchoUpstream, exchange, header_values, http_request, read_response
from tests.support.system import require_tool
from tests.support.waiting import wait_logged, wait_until

WAIT = 5.0  # seconds any single connect, handshake or read may take
UTC = datetime.UTC


# ---------------------------------------------------------------- the proxy with an HTTPS listener


class TlsProxy(Proxy):
    """A proxy started with --https; knows its HTTPS URLs and its certs folder."""

    def __init__(self, folder: Path, config: Path, process: subprocess.Popen[bytes], certs: Path) -> None:
        super().__init__(folder, config, process)
        self.certs = certs

    @property
    def ca_pem(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def ca_key_pem(self) -> Path:
        return self.certs / "ca-key.pem"

    def output(self) -> str:
        return self.stdout() + self.stderr()

    async def wait_both_listening(self, timeout: float = 15.0) -> None:
        def both() -> bool:
            self.urls = LISTENING.findall(self.stdout())
            self.https_urls = LISTENING_HTTPS.findall(self.stdout())
            return bool(self.urls and self.https_urls)

        await wait_until(lambda: both() or self.process.poll() is not None, timeout)
        if both():
            return
        if self.process.poll() is not None:
            raise AssertionError(f"proxy exited with {self.process.returncode}:\n{self.stdout()}\n{self.stderr()}")
        raise AssertionError(f"no http and https 'listening on' lines within {timeout} s:\n{self.stdout()}\n{self.stderr()}")


TlsProxyFactory = Callable[..., Awaitable[TlsProxy]]
DEFAULT_CERTS = object()


def proxy_command(config: Path, *args: str) -> list[str]:
    return [*PROXY, *args[:1], "--config", str(config), *args[1:]]


@pytest.fixture
async def start_tls_proxy(tmp_path: Path) -> AsyncIterator[TlsProxyFactory]:
    """Start `run --http 127.0.0.1:0 --https 127.0.0.1:0 --certs tmp_path/certs`; killed at teardown.

    certs=None leaves --certs out (the default folder beside the config); every proxy of one test
    shares tmp_path/certs otherwise, so a second start is a restart with the same CA.
    """
    started: list[TlsProxy] = []

    async def start(
        sites: dict[str, Any] | str, *args: str, certs: Any = DEFAULT_CERTS, http: str | None = "127.0.0.1:0", https: str | None = "127.0.0.1:0"
    ) -> TlsProxy:
        folder = tmp_path / f"tlsproxy{len(started)}"
        folder.mkdir()
        config = folder / "sites.yaml"
        write_sites(config, sites)
        certs_dir = tmp_path / "certs" if certs is DEFAULT_CERTS else (folder / "certs" if certs is None else Path(certs))
        flags = [*(["--http", http] if http else []), *(["--https", https] if https else []), *([] if certs is None else ["--certs", str(certs_dir)])]
        proxy = TlsProxy(folder, config, spawn(folder, config, *flags, *args), certs_dir)
        started.append(proxy)
        await proxy.wait_both_listening()
        return proxy

    yield start
    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait(timeout=WAIT)


# ---------------------------------------------------------------- clients and tools


async def run_tool(*command: str, timeout: float = 15.0) -> tuple[int, str]:
    """Run a command without blocking the loop (our upstreams live on it); return exit code and output."""
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command[0]} did not finish within {timeout} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def trusting(ca_pem: Path) -> ssl.SSLContext:
    """A client context whose only trust root is the proxy's CA."""
    return ssl.create_default_context(cafile=str(ca_pem))


@contextlib.asynccontextmanager
async def tls_connection(port: int, server_hostname: str, context: ssl.SSLContext) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TLS connection to 127.0.0.1:port with SNI server_hostname ("" sends none); closed on exit."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname, ssl_handshake_timeout=WAIT), WAIT
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), WAIT)


async def presented(port: int, server_hostname: str, context: ssl.SSLContext) -> x509.Certificate:
    """Return the certificate the server presents for server_hostname."""
    async with tls_connection(port, server_hostname, context) as (_, writer):
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


async def https_get(port: int, name: str, context: ssl.SSLContext, target: str = "/") -> Any:
    """GET target from name over TLS (SNI and Host both name); return the raw response."""
    async with tls_connection(port, name, context) as (reader, writer):
        writer.write(http_request("GET", target, host=name, headers=[("Connection", "close")]))
        await writer.drain()
        return await read_response(reader)


async def refused_handshake(port: int, name: str) -> ssl.SSLError:
    """Return the error of a handshake for name that the server must refuse (client accepts anything)."""
    with pytest.raises(ssl.SSLError) as caught:
        async with tls_connection(port, name, trusting_nothing()):
            pass
    return caught.value


def leaf_signed_by(ca_cert: Path, ca_key: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Sign a server leaf for name with the proxy's CA key, as someone who stole that key would."""
    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    authority_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(authority_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()), critical=False)
        .sign(authority_key, hashes.SHA256())
    )
    return certificate, key


def write_pem(
    folder: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None, chain: bytes = b""
) -> tuple[Path, Path | None]:
    cert_file = folder / f"{stem}.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + chain)
    if key is None:
        return cert_file, None
    key_file = folder / f"{stem}-key.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


@contextlib.asynccontextmanager
async def tls_server(certificate_chain: Path, key: Path) -> AsyncIterator[int]:
    """A loopback TLS server that presents the given chain and answers nothing; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate_chain, key)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=WAIT)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), WAIT)


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, so aiohttp sends the real name as SNI and Host."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def site(upstream: EchoUpstream | int, **options: Any) -> dict[str, Any]:
    port = upstream if isinstance(upstream, int) else upstream.port
    return {"upstream": f"127.0.0.1:{port}", **options}


def pem_body_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


# ---------------------------------------------------------------- listener and CA on first start


async def test_https_listener_prints_its_listening_line(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    assert proxy.urls[0].startswith("http://127.0.0.1:")
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", proxy.https_urls[0])
    assert proxy.https_port != proxy.port
    assert proxy.https_port > 0


async def test_no_https_means_no_https_listener_and_no_ca(start_proxy: ProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_proxy({"app1": upstream_a.port})  # conftest passes --no-https
    await asyncio.sleep(0.2)
    assert not LISTENING_HTTPS.findall(proxy.stdout())
    assert not (proxy.folder / "certs").exists()


async def test_listen_https_in_the_file_starts_the_listener(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    text = f"listen:\n  http: 127.0.0.1:0\n  https: 127.0.0.1:0\nsites:\n  app1: 127.0.0.1:{upstream_a.port}\n"
    proxy = await start_tls_proxy(text, http=None, https=None)
    response = await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))
    assert response.status == 200


async def test_first_start_creates_the_ca_with_private_modes(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    certs = tmp_path / "elsewhere" / "my-certs"
    proxy = await start_tls_proxy({"app1": upstream_a.port}, certs=certs)
    assert proxy.ca_pem.is_file() and proxy.ca_key_pem.is_file()
    assert stat.S_IMODE(os.stat(certs).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(proxy.ca_key_pem).st_mode) == 0o600
    x509.load_pem_x509_certificate(proxy.ca_pem.read_bytes())
    assert not (proxy.folder / "certs").exists()  # --certs overrides the default folder


async def test_default_certs_folder_is_beside_the_config_file(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port}, certs=None)
    assert proxy.certs == proxy.config.parent / "certs"
    assert proxy.ca_pem.is_file()
    assert stat.S_IMODE(os.stat(proxy.ca_key_pem).st_mode) == 0o600
    response = await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))
    assert response.status == 200


async def test_private_keys_never_reach_the_log(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    for name in ("app1.localhost", "other.localhost", "localhost"):
        await presented(proxy.https_port, name, trusting(proxy.ca_pem))
    await presented(proxy.https_port, "", trusting_nothing())
    output = proxy.output()
    assert "PRIVATE KEY" not in output
    for line in pem_body_lines(proxy.ca_key_pem):
        assert line not in output
    assert await proxy.stop() == 0
    output = proxy.output()
    assert "PRIVATE KEY" not in output
    assert not any(line in output for line in pem_body_lines(proxy.ca_key_pem))


async def test_ca_certificate_is_a_ten_year_name_constrained_ca(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    ca = x509.load_pem_x509_certificate(proxy.ca_pem.read_bytes())
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=3649) <= lifetime <= datetime.timedelta(days=3652)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True and basic.value.path_length == 0
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.excluded_subtrees is None
    permitted = list(constraints.value.permitted_subtrees or [])
    assert sorted(map(str, permitted)) == sorted(
        map(
            str,
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                x509.IPAddress(ipaddress.ip_network("::1/128")),
            ],
        )
    )


async def test_ca_is_reused_across_restarts(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    first = await start_tls_proxy({"app1": upstream_a.port})
    fingerprint = x509.load_pem_x509_certificate(first.ca_pem.read_bytes()).fingerprint(hashes.SHA256())
    key_bytes = first.ca_key_pem.read_bytes()
    assert await first.stop() == 0

    second = await start_tls_proxy({"app1": upstream_a.port})
    assert second.certs == first.certs
    assert x509.load_pem_x509_certificate(second.ca_pem.read_bytes()).fingerprint(hashes.SHA256()) == fingerprint
    assert second.ca_key_pem.read_bytes() == key_bytes
    assert "created a local CA" not in second.stderr()
    # A client that trusted the first run's CA file still accepts the second run's leaves.
    response = await https_get(second.https_port, "app1.localhost", trusting(first.ca_pem))
    assert response.status == 200


# ---------------------------------------------------------------- leaves minted per SNI name


async def test_python_ssl_trusting_only_the_ca_reaches_the_backend(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    response = await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem), "/hello?x=1")
    assert response.status == 200
    assert response.values("X-Upstream") == ["A"]
    assert response.json()["target"] == "/hello?x=1"


async def test_forwarded_requests_say_x_forwarded_proto_https(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    over_https = await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))
    assert header_values(over_https.json(), "X-Forwarded-Proto") == ["https"]
    over_http = await exchange(proxy.port, http_request("GET", "/"))
    assert header_values(over_http.json(), "X-Forwarded-Proto") == ["http"]


async def test_leaf_is_p256_short_lived_for_the_exact_name(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    leaf = await presented(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    now = datetime.datetime.now(UTC)
    assert leaf.not_valid_after_utc - now <= datetime.timedelta(days=30)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=30, hours=1)
    assert san_values(leaf) == ["app1.localhost"]
    ca = x509.load_pem_x509_certificate(proxy.ca_pem.read_bytes())
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)


async def test_second_handshake_for_a_name_gets_the_same_certificate(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    context = trusting(proxy.ca_pem)
    first = await presented(proxy.https_port, "app1.localhost", context)
    second = await presented(proxy.https_port, "app1.localhost", context)
    other = await presented(proxy.https_port, "app2.localhost", context)
    assert first == second
    assert other != first and san_values(other) == ["app2.localhost"]


async def test_wildcard_site_gets_a_leaf_for_the_exact_host(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"*.preview.localhost": upstream_a.port})
    context = trusting(proxy.ca_pem)
    leaf = await presented(proxy.https_port, "a.preview.localhost", context)
    assert san_values(leaf) == ["a.preview.localhost"]
    assert not any("*" in value for value in san_values(leaf))
    assert san_values(await presented(proxy.https_port, "b.preview.localhost", context)) == ["b.preview.localhost"]
    response = await https_get(proxy.https_port, "a.preview.localhost", context, "/w")
    assert response.status == 200 and response.values("X-Upstream") == ["A"]


async def test_handshake_without_sni_gets_localhost_and_loopback_ips(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    no_name_check = trusting(proxy.ca_pem)
    no_name_check.check_hostname = False  # still verifies the chain against the CA
    leaf = await presented(proxy.https_port, "", no_name_check)
    assert sorted(san_values(leaf)) == sorted(["localhost", "127.0.0.1", "::1"])
    # Python sends no SNI for an IP address: https://127.0.0.1:PORT/ verifies by the IP entry.
    assert await presented(proxy.https_port, "127.0.0.1", trusting(proxy.ca_pem)) == leaf


@pytest.mark.parametrize("name", ["localhost.evil.com", "example.com", "evil-localhost", "app1.localhost.evil.com"])
async def test_no_leaf_for_names_outside_the_ca(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, name: str) -> None:
    """Even a client that accepts any certificate gets none for a non-local name: an unrecognized_name alert."""
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    error = await refused_handshake(proxy.https_port, name)
    assert "UNRECOGNIZED_NAME" in str(error)
    # The listener keeps serving local names.
    assert (await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))).status == 200


# ---------------------------------------------------------------- real clients and the name constraint


async def test_curl_trusting_only_the_ca_reaches_the_backend(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    curl = require_tool("curl")
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    port = proxy.https_port
    code, output = await run_tool(
        curl,
        "-sS",
        "--max-time",
        "10",
        "--noproxy",
        "*",
        "--cacert",
        str(proxy.ca_pem),
        "--resolve",
        f"app1.localhost:{port}:127.0.0.1",
        f"https://app1.localhost:{port}/via-curl",
    )
    assert code == 0, output
    echoed = json.loads(output)
    assert echoed["target"] == "/via-curl"
    assert header_values(echoed, "X-Forwarded-Proto") == ["https"]


async def test_curl_refuses_the_proxy_without_the_ca(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    """Negative control for the curl test: the CA file is what makes curl accept the proxy."""
    curl = require_tool("curl")
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    other_cert, _ = self_signed_files(tmp_path, "unrelated.test")
    port = proxy.https_port
    code, output = await run_tool(
        curl,
        "-sS",
        "--max-time",
        "10",
        "--noproxy",
        "*",
        "--cacert",
        str(other_cert),
        "--resolve",
        f"app1.localhost:{port}:127.0.0.1",
        f"https://app1.localhost:{port}/",
    )
    assert code == 60, output  # CURLE_PEER_FAILED_VERIFICATION


async def test_openssl_rejects_a_ca_signed_leaf_for_example_com(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    """The name constraint, checked by OpenSSL itself: the proxy's leaf verifies, a stolen-key leaf does not."""
    openssl = require_tool("openssl")
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    proxies_leaf = await presented(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem))
    good_file, _ = write_pem(tmp_path, "app1-leaf", proxies_leaf)
    code, output = await run_tool(openssl, "verify", "-CAfile", str(proxy.ca_pem), str(good_file))
    assert code == 0 and f"{good_file}: OK" in output, output

    forged, _ = leaf_signed_by(proxy.ca_pem, proxy.ca_key_pem, "example.com")
    forged_file, _ = write_pem(tmp_path, "example-leaf", forged)
    code, output = await run_tool(openssl, "verify", "-CAfile", str(proxy.ca_pem), str(forged_file))
    assert code != 0, output
    assert "permitted subtree violation" in output


async def test_python_ssl_rejects_a_ca_signed_leaf_for_example_com(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    client = trusting(proxy.ca_pem)
    await presented(proxy.https_port, "app1.localhost", client)  # accepted: the proxy's own leaf

    # Positive control for the server below: a leaf we sign for a local name is accepted...
    local, local_key = leaf_signed_by(proxy.ca_pem, proxy.ca_key_pem, "app1.localhost")
    local_chain, local_key_file = write_pem(tmp_path, "local", local, local_key, proxy.ca_pem.read_bytes())
    assert local_key_file is not None
    async with tls_server(local_chain, local_key_file) as port:
        assert san_values(await presented(port, "app1.localhost", client)) == ["app1.localhost"]

    # ...and the same CA's signature on example.com is refused by the name constraint.
    forged, forged_key = leaf_signed_by(proxy.ca_pem, proxy.ca_key_pem, "example.com")
    forged_chain, forged_key_file = write_pem(tmp_path, "forged", forged, forged_key, proxy.ca_pem.read_bytes())
    assert forged_key_file is not None
    async with tls_server(forged_chain, forged_key_file) as port:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await presented(port, "example.com", client)
    assert "permitted subtree violation" in str(caught.value)


async def test_wss_websocket_through_the_https_listener(start_tls_proxy: TlsProxyFactory) -> None:
    seen_proto: list[str | None] = []

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        seen_proto.append(request.headers.get("X-Forwarded-Proto"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", websocket)
    async with TestServer(app, host="127.0.0.1") as upstream:
        assert upstream.port is not None
        proxy = await start_tls_proxy({"app1": upstream.port})
        connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), ssl=trusting(proxy.ca_pem))
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.ws_connect(f"wss://app1.localhost:{proxy.https_port}/ws", timeout=aiohttp.ClientWSTimeout(ws_close=WAIT)) as ws,
        ):
            await ws.send_str("hello")
            message = await asyncio.wait_for(ws.receive(), WAIT)
            assert message.type is WSMsgType.TEXT and message.data == "echo:hello"
            peer = ws.get_extra_info("ssl_object")
            assert peer is not None
            leaf = x509.load_der_x509_certificate(peer.getpeercert(binary_form=True))
            assert san_values(leaf) == ["app1.localhost"]
            await ws.close()
    assert seen_proto == ["https"]


# ---------------------------------------------------------------- sites: own certificates, redirects, outside names


async def test_site_with_its_own_certificate_gets_it_presented(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    cert_file, key_file = self_signed_files(tmp_path, "myapp.test")
    proxy = await start_tls_proxy({"myapp.test": site(upstream_a, tls={"cert": str(cert_file), "key": str(key_file)})})
    client = ssl.create_default_context(cafile=str(cert_file))  # trusts only that certificate
    leaf = await presented(proxy.https_port, "myapp.test", client)
    assert leaf == x509.load_pem_x509_certificate(cert_file.read_bytes())
    response = await https_get(proxy.https_port, "myapp.test", client, "/own")
    assert response.status == 200 and response.values("X-Upstream") == ["A"]
    assert "mkcert" not in proxy.stderr()  # it has a certificate: no warning about names outside the CA


async def test_https_redirect_sends_308_to_the_https_listener(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": site(upstream_a, https_redirect=True)})
    response = await exchange(proxy.port, http_request("GET", "/x?y=1"))
    assert response.status == 308
    assert response.values("Location") == [f"https://app1.localhost:{proxy.https_port}/x?y=1"]
    assert upstream_a.targets == []
    # Over HTTPS the same site is served, not redirected again.
    over_https = await https_get(proxy.https_port, "app1.localhost", trusting(proxy.ca_pem), "/x?y=1")
    assert over_https.status == 200 and over_https.json()["target"] == "/x?y=1"


async def test_without_https_redirect_http_is_served(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    response = await exchange(proxy.port, http_request("GET", "/x?y=1"))
    assert response.status == 200 and response.json()["target"] == "/x?y=1"


async def test_site_outside_the_ca_warns_serves_http_and_refuses_tls_once_logged(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream) -> None:
    proxy = await start_tls_proxy({"myapp.test": upstream_a.port})
    warning = [line for line in proxy.stderr().splitlines() if "myapp.test" in line]
    assert warning, proxy.stderr()
    assert "tls:" in warning[0] and "mkcert" in warning[0]

    response = await exchange(proxy.port, http_request("GET", "/plain", host="myapp.test"))
    assert response.status == 200 and response.values("X-Upstream") == ["A"]

    await wait_logged(proxy, "GET /plain")  # its access line is written after the response: count from here
    before = len(proxy.stderr().splitlines())
    for _ in range(2):
        error = await refused_handshake(proxy.https_port, "myapp.test")
        assert error.reason == "TLSV1_UNRECOGNIZED_NAME", error
    await wait_logged(proxy, "refused")
    await asyncio.sleep(0.3)  # room for a wrongly repeated line to land
    new_lines = [line for line in proxy.stderr().splitlines()[before:] if "myapp.test" in line]
    assert len(new_lines) == 1, new_lines
    assert "tls:" in new_lines[0] and "mkcert" in new_lines[0]


async def test_world_readable_ca_key_is_refused_with_the_fix(start_tls_proxy: TlsProxyFactory, upstream_a: EchoUpstream, tmp_path: Path) -> None:
    proxy = await start_tls_proxy({"app1": upstream_a.port})
    assert await proxy.stop() == 0
    os.chmod(proxy.ca_key_pem, 0o644)
    code, output = await run_tool(*proxy_command(proxy.config, "run", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--certs", str(proxy.certs)))
    assert code == 2, output
    assert "chmod 600" in output
    assert str(proxy.ca_key_pem) in output
    assert "Traceback" not in output
    assert "listening on" not in output
    assert stat.S_IMODE(os.stat(proxy.ca_key_pem).st_mode) == 0o644  # refused, not silently "fixed"


# ---------------------------------------------------------------- the `ca` command


def test_ca_command_creates_and_describes_the_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    config = tmp_path / "sites.yaml"
    result = subprocess.run(proxy_command(config, "ca", "--certs", str(certs)), check=False, capture_output=True, text=True, timeout=15, cwd=tmp_path)
    assert result.returncode == 0, result
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    out = result.stdout
    assert str(certs / "ca.pem") in out
    assert ca.fingerprint(hashes.SHA256()).hex(":").upper() in out
    assert f"{ca.not_valid_before_utc:%Y-%m-%d}" in out and f"{ca.not_valid_after_utc:%Y-%m-%d}" in out
    for name in ("localhost", "127.0.0.0/8", "::1/128"):
        assert name in out
    assert "PRIVATE KEY" not in out + result.stderr
    assert stat.S_IMODE(os.stat(certs / "ca-key.pem").st_mode) == 0o600

    again = subprocess.run(proxy_command(config, "ca", "--certs", str(certs)), check=False, capture_output=True, text=True, timeout=15, cwd=tmp_path)
    assert again.returncode == 0, again
    assert ca.fingerprint(hashes.SHA256()).hex(":").upper() in again.stdout  # the same CA, not a new one
    assert "created" not in again.stdout


def test_ca_command_defaults_to_certs_beside_the_config(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    result = subprocess.run(proxy_command(folder / "sites.yaml", "ca"), check=False, capture_output=True, text=True, timeout=15, cwd=tmp_path)
    assert result.returncode == 0, result
    assert (folder / "certs" / "ca.pem").is_file()
    assert str(folder / "certs" / "ca.pem") in result.stdout
