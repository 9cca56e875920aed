"""The package's layout holds: no import cycle, imports follow the flow of a request, and aiohttp's
server is the HTTP/1.1 front-end's business alone (ARCHITECTURE.md). Reads the source, imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"

# What each package may import from the others (besides itself and the pure leaves).
LEAVES = {"proxy", "proxy.names", "proxy.errors"}
ALLOWED = {
    "config": set(),
    "routing": {"config"},
    "upstream": {"config"},
    "tls": {"config", "routing"},
    "diagnostics": {"config", "upstream", "tls"},
    "forwarding": {"config", "routing", "upstream", "diagnostics"},
    "dashboard": {"config", "forwarding", "upstream", "diagnostics"},
    "frontends": {"config", "forwarding", "diagnostics"},
}
# The only modules that may import aiohttp at all, and the one that may touch its internals.
AIOHTTP_USERS = {"proxy.server", "proxy.frontends.listeners", "proxy.frontends.http1.connection", "proxy.frontends.http1.aiohttp_internals"}
AIOHTTP_INTERNALS = "proxy.frontends.http1.aiohttp_internals"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """Return (module, imported names) for every import statement in a module, at any depth."""
    tree = ast.parse(MODULES[name].read_text())
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import"
            found.append((node.module or "", [alias.name for alias in node.names]))
    return found


def proxy_imports(name: str) -> set[str]:
    """Return the package's own modules a module imports (`from proxy.x import y` counts y when it is a module)."""
    targets = set()
    for module, names in imports_of(name):
        if not module.startswith("proxy"):
            continue
        submodules = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
        targets |= submodules or {module}
    return targets - {name}


def test_no_module_imports_itself_back_through_others() -> None:
    graph = {name: proxy_imports(name) for name in MODULES}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for target in sorted(graph[name]):
            if target in on_path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target], on_path | {target}, done)
        done.add(name)

    done: set[str] = set()
    for name in MODULES:
        if name not in done:
            visit(name, [name], {name}, done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_comes_before_it_in_the_flow(package: str) -> None:
    prefix = f"proxy.{package}"
    wrong = {}
    for name in MODULES:
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for target in proxy_imports(name):
            if target in LEAVES or target == prefix or target.startswith(prefix + "."):
                continue
            if target.split(".")[1] not in ALLOWED[package]:
                wrong[name] = target
    assert not wrong, f"{package} imports against the flow: {wrong}"


def test_only_the_http1_front_end_and_the_server_use_aiohttp() -> None:
    users = {name for name in MODULES for module, _ in imports_of(name) if module == "aiohttp" or module.startswith("aiohttp.")}
    assert users <= AIOHTTP_USERS, f"aiohttp imported by {sorted(users - AIOHTTP_USERS)}"


def test_aiohttp_internals_are_touched_in_one_module_only() -> None:
    """Private modules and names (a leading underscore, or web_protocol) come in through aiohttp_internals.py alone."""
    touching = set()
    for name in MODULES:
        source = MODULES[name].read_text()
        tree = ast.parse(source)
        for module, names in imports_of(name):
            if module.startswith("aiohttp") and (
                any(part.startswith("_") for part in module.split("."))
                or "web_protocol" in module
                or any(n.startswith("_") or n == "web_protocol" for n in names)
            ):
                touching.add(name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in ("web", "web_protocol", "aiohttp")
            ):
                touching.add(name)
    assert touching <= {AIOHTTP_INTERNALS}, f"aiohttp internals used outside {AIOHTTP_INTERNALS}: {sorted(touching - {AIOHTTP_INTERNALS})}"
