"""Static roots through the real proxy process, with raw request targets on a plain socket (no
client library normalizes a single byte): containment by resolved path, symlinks, no listings,
no dotfiles, and roots that would expose the config file or private keys.

The tree: `public/` (the root) beside `public-secret/` (a sibling sharing the root's name as a
prefix) and `secret.txt`; inside the root, symlinks that point out (file, folder, absolute, a
chain, `..`) and in (file, folder). Every answer is checked for the secret's content; refusals
must look exactly like a missing file. Three sites serve the same root: plain, as an SPA, and
under a stripped `/static` route prefix.

Cases: 164 (36 traversal spellings x 3 sites, 1 absolute-form check, 10 outward symlinks x 2 sites,
3 inward links, 3 refusal-vs-missing comparisons, 5 folders x 2 sites never listed, 9 dotfile
spellings, 1 .well-known, 6 roots refused by config, 2 private keys under a root, 1 reload).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.certs import self_signed_files
from tests.support.proxies import PROXY, spawn, wait_listening_blocking
from tests.support.rawhttp import RawResponse, exchange, http_request
from tests.support.reloading import save_rename_over
from tests.support.waiting import wait_until

SECRET = "SECRET-7f3a-never-served"
INDEX = "PUBLIC-INDEX"


# ---------------------------------------------------------------- the tree and the proxy serving it


@dataclass
class Served:
    base: Path
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    def stderr(self) -> str:
        return (self.folder / "proxy.stderr").read_text(errors="replace")


def build_tree(base: Path) -> Path:
    """Create public/ and the secrets around it; return public/."""
    public = base / "public"
    files = {
        "index.html": INDEX,
        "a.txt": "public a",
        "docs/page.txt": "docs page",
        "sub/ok.txt": "sub ok",
        "sub/.hidden": SECRET,
        ".env": SECRET,
        ".git/config": SECRET,
        ".well-known/security.txt": "Contact: mailto:dev@example.test",
        "public-secret/x": "a folder inside the root that only shares the sibling's name",
    }
    for name, text in files.items():
        (public / name).parent.mkdir(parents=True, exist_ok=True)
        (public / name).write_text(text)
    (public / "empty").mkdir()
    (base / "secret.txt").write_text(SECRET)
    (base / "public-secret").mkdir()
    (base / "public-secret" / "x").write_text(SECRET)
    (base / "public-secret" / "index.html").write_text(SECRET)
    # Inward links: served.
    (public / "inner-link.txt").symlink_to("a.txt")
    (public / "inner-dir").symlink_to("docs", target_is_directory=True)
    # Outward links: never served, whatever way they point out.
    (public / "out-file.txt").symlink_to("../secret.txt")
    (public / "out-abs.txt").symlink_to(base / "secret.txt")
    (public / "out-dir").symlink_to("../public-secret", target_is_directory=True)
    (public / "up").symlink_to("..", target_is_directory=True)
    (public / "inner-out.txt").symlink_to("../secret.txt")
    (public / "chain.txt").symlink_to("inner-out.txt")  # inside -> inside -> outside
    (public / "deep").mkdir()
    (public / "deep" / "link.txt").symlink_to("../../secret.txt")
    return public


def start_sync(folder: Path, config_text: str, *args: str) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start the proxy on 127.0.0.1:0; return the process and its port once it listens, or no port if it exited first."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "sites.yaml"
    config.write_text(config_text)
    process = spawn(folder, config, "--http", "127.0.0.1:0", *args)
    try:
        urls = wait_listening_blocking(folder, process)
    except AssertionError:
        process.kill()
        process.wait(5)
        raise
    return process, int(urls[0].rsplit(":", 1)[1]) if urls else None


def started(folder: Path, config_text: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    process, port = start_sync(folder, config_text, *args)
    assert port is not None, f"the proxy exited {process.returncode}:\n{(folder / 'proxy.stderr').read_text()}"
    return process, port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("static")
    public = build_tree(base)
    config_text = (
        "sites:\n"
        f"  app1:\n    root: {public}\n"
        f"  spa:\n    root: {public}\n    spa: true\n"
        f"  pre:\n    routes:\n      /static:\n        root: {public}\n        strip_prefix: true\n"
    )
    process, port = started(base / "conf", config_text, "--no-https")
    try:
        yield Served(base, port, process, base / "conf")
    finally:
        process.kill()
        process.wait(5)


async def get(served: Served, target: str, host: str = "app1.localhost", method: str = "GET") -> RawResponse:
    response = await exchange(served.port, http_request(method, target, host=f"{host}:{served.port}", headers=[("Connection", "close")]))
    assert served.process.poll() is None, f"the proxy died on {target!r}:\n{served.stderr()}"
    return response


def assert_no_secret(response: RawResponse, what: str) -> None:
    assert SECRET.encode() not in response.body, f"{what}: the secret was served ({response.status})"
    assert b"root:x:0:0" not in response.body, f"{what}: a system file was served"


# ---------------------------------------------------------------- traversal, every spelling


TRAVERSALS = [
    "/../public-secret/x",
    "/../secret.txt",
    "/%2e%2e/public-secret/x",
    "/%2E%2E/public-secret/x",
    "/.%2e/public-secret/x",
    "/%2e./public-secret/x",
    "/..%2fpublic-secret/x",
    "/..%2Fpublic-secret%2Fx",
    "/%2e%2e%2fpublic-secret%2fx",
    "/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/..\\public-secret\\x",
    "/..\\..\\secret.txt",
    "/%5c..%5cpublic-secret%5cx",
    "/..%5c..%5csecret.txt",
    "/%252e%252e/public-secret/x",
    "/%252e%252e%252fpublic-secret%252fx",
    "/%c0%ae%c0%ae/public-secret/x",
    "/%c0%ae%c0%ae%c0%afpublic-secret%c0%afx",
    "/%e0%80%ae%e0%80%ae/public-secret/x",
    "/%00/../public-secret/x",
    "/a.txt%00/../../public-secret/x",
    "/..%00/public-secret/x",
    "/a/../../public-secret/x",
    "/docs/../../public-secret/x",
    "/docs/%2e%2e/%2e%2e/secret.txt",
    "//../public-secret/x",
    "/./../public-secret/x",
    "/..;/public-secret/x",
    "/.../public-secret/x",
    "/..%20/public-secret/x",
    "/%2e%2e%00/public-secret/x",
    "/..%u2215public-secret%u2215x",
    "/%uff0e%uff0e/public-secret/x",
    "/%ef%bc%8e%ef%bc%8e/public-secret/x",
    "/..%0d%0a/public-secret/x",
    "/public-secret/../../public-secret/x",
]
SITES = [("app1.localhost", ""), ("spa.localhost", ""), ("pre.localhost", "/static")]


@pytest.mark.parametrize("target", TRAVERSALS)
@pytest.mark.parametrize(("host", "prefix"), SITES, ids=["plain", "spa", "prefix"])
async def test_traversal_never_leaves_the_root(served: Served, host: str, prefix: str, target: str) -> None:
    response = await get(served, prefix + target, host)
    assert_no_secret(response, f"{host} {prefix + target}")
    if host == "spa.localhost" and response.status == 200:
        assert response.body.decode() == INDEX, "an SPA may only fall back to its own index.html"
    else:
        assert response.status in (400, 403, 404), f"{host} {prefix + target}: {response.status}"


async def test_absolute_form_target_cannot_traverse_either(served: Served) -> None:
    for target in ("/../public-secret/x", "/%2e%2e/public-secret/x", "/..%2fsecret.txt"):
        raw = f"GET http://app1.localhost:{served.port}{target} HTTP/1.1\r\nHost: app1.localhost:{served.port}\r\nConnection: close\r\n\r\n".encode()
        response = await exchange(served.port, raw)
        assert_no_secret(response, target)
        assert response.status in (400, 404), target


# ---------------------------------------------------------------- symlinks


OUTWARD = [
    "/out-file.txt",
    "/out-abs.txt",
    "/out-dir/x",
    "/out-dir/",
    "/out-dir/index.html",
    "/out-dir",
    "/up/secret.txt",
    "/up/public-secret/x",
    "/chain.txt",
    "/deep/link.txt",
]


@pytest.mark.parametrize("target", OUTWARD)
@pytest.mark.parametrize("host", ["app1.localhost", "spa.localhost"], ids=["plain", "spa"])
async def test_symlink_pointing_outside_the_root_is_not_followed(served: Served, host: str, target: str) -> None:
    response = await get(served, target, host)
    assert_no_secret(response, target)
    assert response.status == 404, f"{target}: {response.status} (an outward symlink must look missing, never redirect or fall back)"
    assert INDEX.encode() not in response.body


@pytest.mark.parametrize(
    ("target", "text"), [("/inner-link.txt", "public a"), ("/inner-dir/page.txt", "docs page"), ("/public-secret/x", "a folder inside the root")]
)
async def test_symlink_or_name_inside_the_root_is_served(served: Served, target: str, text: str) -> None:
    response = await get(served, target)
    assert response.status == 200 and response.complete, target
    assert response.body.decode().startswith(text)


@pytest.mark.parametrize(("refused", "missing"), [("/out-file.txt", "/nope.txt"), ("/out-dir/x", "/nope-dir/x"), ("/up/secret.txt", "/nope-dir/secret.txt")])
async def test_a_refused_path_looks_exactly_like_a_missing_one(served: Served, refused: str, missing: str) -> None:
    """No oracle: whether something exists outside the root does not change the answer."""
    first, second = await get(served, refused), await get(served, missing)
    assert (first.status, first.body) == (second.status, second.body)


# ---------------------------------------------------------------- no listings, no dotfiles


@pytest.mark.parametrize("folder", ["/docs/", "/empty/", "/inner-dir/", "/sub/", "/.well-known/"])
@pytest.mark.parametrize("host", ["app1.localhost", "spa.localhost"], ids=["plain", "spa"])
async def test_a_folder_without_index_is_never_listed(served: Served, host: str, folder: str) -> None:
    response = await get(served, folder, host)
    for name in (b"page.txt", b"ok.txt", b".hidden", b"security.txt", b"Index of"):
        assert name not in response.body, f"{host} {folder} lists {name!r}"
    if host == "app1.localhost":
        assert response.status in (403, 404), f"{folder}: {response.status}"
    else:
        assert response.status == 200 and response.body.decode() == INDEX


@pytest.mark.parametrize(
    "target",
    ["/.env", "/%2eenv", "/%2Eenv", "/.git/config", "/.git/", "/sub/.hidden", "/sub/%2ehidden", "/.well-known/../.env", "/.well-known/%2e%2e/.env"],
)
async def test_dotfiles_are_not_served(served: Served, target: str) -> None:
    for host in ("app1.localhost", "spa.localhost"):
        response = await get(served, target, host)
        assert_no_secret(response, f"{host} {target}")
        assert response.status in (400, 403, 404), f"{host} {target}: {response.status}"


async def test_well_known_is_served(served: Served) -> None:
    response = await get(served, "/.well-known/security.txt")
    assert response.status == 200
    assert response.body == b"Contact: mailto:dev@example.test"


# ---------------------------------------------------------------- roots that would expose the config or keys


def run_cli(command: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    extra = ["--http", "127.0.0.1:0", "--no-https", *args] if command == "run" else list(args)
    try:
        return subprocess.run(
            [*PROXY, command, "--config", str(config), *extra],
            capture_output=True,
            text=True,
            cwd=config.parent,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`{command}` ran instead of refusing {config.read_text()!r}") from None


@pytest.mark.parametrize(
    ("root", "line", "words"),
    [
        pytest.param("  app1:\n    root: .\n", 3, "contains this config file", id="config-folder"),
        pytest.param("  app1:\n    root: ..\n", 3, "contains this config file", id="parent-folder"),
        pytest.param("  app1:\n    root: /\n", 3, "contains this config file", id="filesystem-root"),
        pytest.param("  app1:\n    root: ./alias\n", 3, "contains this config file", id="symlink-to-config-folder"),
        pytest.param("  app1:\n    root: ./certs\n", 3, "certs folder", id="certs-folder"),
        pytest.param("  app1:\n    routes:\n      /files:\n        root: ./\n", 5, "contains this config file", id="route-root"),
    ],
)
def test_a_root_holding_the_config_or_the_certs_is_refused_with_file_line_col(tmp_path: Path, root: str, line: int, words: str) -> None:
    config = tmp_path / "sites.yaml"
    config.write_text("sites:\n" + root)
    (tmp_path / "certs").mkdir()
    (tmp_path / "alias").symlink_to(".", target_is_directory=True)
    for command in ("check", "run"):
        result = run_cli(command, config)
        assert result.returncode == 2, f"{command}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        assert re.match(rf"{re.escape(str(config))}:{line}:\d+: ", result.stderr), f"{command}: {result.stderr}"
        assert words in result.stderr, result.stderr
        assert "listening on" not in result.stdout
        assert "Traceback" not in result.stderr


async def test_a_certs_folder_given_by_flag_inside_the_root_is_refused_or_never_served(tmp_path: Path) -> None:
    """`--certs ./public/ca` with `root: ./public`: refuse to start, or at the very least never serve ca-key.pem."""
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.html").write_text(INDEX)
    certs = tmp_path / "public" / "ca"
    process, port = start_sync(tmp_path / "conf", "sites:\n  app1:\n    root: ../public\n", "--https", "127.0.0.1:0", "--certs", str(certs))
    try:
        if port is None:  # refused at start: that is the fix we want
            stderr = (tmp_path / "conf" / "proxy.stderr").read_text()
            assert process.returncode == 2 and "certs" in stderr, stderr
            return
        for target in ("/ca/ca-key.pem", "/ca/ca.pem"):
            response = await exchange(port, http_request("GET", target, headers=[("Connection", "close")]))
            assert b"PRIVATE KEY" not in response.body, f"{target} served the CA's private key"
            assert response.status == 404, f"{target}: {response.status}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def test_a_sites_own_tls_key_inside_a_root_is_refused_or_never_served(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    cert, key = self_signed_files(public, "app1.localhost")
    config_text = f"sites:\n  app1:\n    root: {public}\n    tls:\n      cert: {cert}\n      key: {key}\n"
    process, port = start_sync(tmp_path / "conf", config_text, "--no-https")
    try:
        if port is None:  # refused at start: that is the fix we want
            assert process.returncode == 2, (tmp_path / "conf" / "proxy.stderr").read_text()
            return
        response = await exchange(port, http_request("GET", "/" + key.name, headers=[("Connection", "close")]))
        assert b"PRIVATE KEY" not in response.body, f"/{key.name} served the site's private key"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def test_a_reload_to_a_root_holding_the_config_is_refused_and_the_old_root_serves(tmp_path: Path) -> None:
    public = build_tree(tmp_path)
    folder = tmp_path / "conf"
    process, port = started(folder, "sites:\n  app1:\n    root: ../public\n", "--no-https")
    config = folder / "sites.yaml"
    try:
        await save_rename_over(config, "sites:\n  app1:\n    root: .\n")
        await wait_until(lambda: "contains this config file" in (folder / "proxy.stderr").read_text(errors="replace"), 5)
        stderr = (folder / "proxy.stderr").read_text(errors="replace")
        assert re.search(rf"{re.escape(str(config))}:3:\d+: root folder", stderr), stderr
        for target in ("/sites.yaml", "/proxy.stderr"):
            response = await exchange(port, http_request("GET", target, headers=[("Connection", "close")]))
            assert response.status == 404 and b"root:" not in response.body, target
        response = await exchange(port, http_request("GET", "/a.txt", headers=[("Connection", "close")]))
        assert (response.status, response.body) == (200, b"public a")
        assert public.is_dir()
    finally:
        process.kill()
        process.wait(5)
