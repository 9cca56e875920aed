"""The proxy's own responses: index page, /api/sites, and the 404/502/504/508 pages.

Each answer comes as HTML, JSON or plain text by the client's Accept header. Every value is
html.escape'd: site names and paths come from requests and from the user's file.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

from proxy.config import Config, Site, StaticRoot, Upstreams
from proxy.upstreams import UpstreamBook

_STYLE = resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Problem:
    """An error answer: what happened, what to do, and the facts behind it."""

    status: int
    title: str
    detail: str
    hint: str = ""
    facts: dict[str, str | list[str]] = field(default_factory=dict)
    reload_when_ready: bool = False  # the HTML page polls and reloads once the upstream accepts


def _wants(accept: str) -> str:
    accept = accept.lower()
    if "text/html" in accept:
        return "html"
    if "application/json" in accept or "+json" in accept:
        return "json"
    return "text"


def _page(title: str, body: str, dashboard_url: str, *, head: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · localhost-proxy</title>{head}
<style>{_STYLE}</style></head>
<body><header><a class="brand" href="{html.escape(dashboard_url)}">localhost-proxy</a></header>
<main>{body}</main></body></html>
"""


def problem_response(problem: Problem, accept: str, dashboard_url: str) -> web.Response:
    """Return a Problem as HTML, JSON or plain text, as the client asked."""
    kind = _wants(accept)
    headers = {"Cache-Control": "no-store"}
    if kind == "json":
        payload = {"error": problem.title, "detail": problem.detail, "hint": problem.hint, **problem.facts}
        return web.json_response(payload, status=problem.status, headers=headers)
    if kind == "text":
        lines = [f"{problem.status} {problem.title}", problem.detail]
        lines += [f"{key}: {', '.join(v) if isinstance(v, list) else v}" for key, v in problem.facts.items()]
        if problem.hint:
            lines.append(problem.hint)
        return web.Response(text="\n".join(lines) + "\n", status=problem.status, headers=headers)
    facts = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(', '.join(v) if isinstance(v, list) else v)}</dd>" for k, v in problem.facts.items()
    )
    body = f"""<h1><span class="status">{problem.status}</span> {html.escape(problem.title)}</h1>
<p class="detail">{html.escape(problem.detail)}</p>
{f'<p class="hint">{html.escape(problem.hint)}</p>' if problem.hint else ''}
{f'<dl>{facts}</dl>' if facts else ''}
{_WAIT_FOR_UPSTREAM if problem.reload_when_ready else ''}
<p><a href="{html.escape(dashboard_url)}">All sites</a></p>"""
    return web.Response(text=_page(problem.title, body, dashboard_url), status=problem.status, content_type="text/html", headers=headers)


# Start the proxy first and the app later: the error page asks the proxy (not the app) every
# second whether the upstream accepts yet, and turns into the app as soon as it does.
PROBE_HEADER = "X-Localhost-Proxy-Probe"
_WAIT_FOR_UPSTREAM = f"""<p class="waiting" id="waiting">Waiting for the app: this page reloads by itself once it accepts connections.</p>
<script>
(function poll() {{
  setTimeout(function () {{
    fetch(location.href, {{headers: {{"{PROBE_HEADER}": "ready"}}, cache: "no-store"}})
      .then(function (r) {{ if (r.status === 200) location.reload(); else poll(); }}, poll);
  }}, 1000);
}})();
</script>"""


def bare_not_found() -> web.Response:
    """Return the 404 for a foreign Host: nothing about sites, paths or addresses."""
    return web.Response(status=404, text="Not Found\n", headers={"Cache-Control": "no-store"})


def site_url(site: Site, scheme: str, port: int | None) -> str | None:
    """Return the address a browser opens for a site, or None for a wildcard."""
    if site.is_wildcard:
        return None
    return f"{scheme}://{site.host}" + (f":{port}" if port else "")


def api_sites(config: Config, config_error: str | None, book: UpstreamBook, scheme: str, port: int | None) -> dict[str, object]:
    """Return the /api/sites document: the config file, why its latest save was not loaded (or null), the sites."""
    return {
        "config": config.file,
        "config_error": config_error,
        "config_errors": config_error.splitlines() if config_error else [],
        "sites": sites_json(config, book, scheme, port),
    }


def sites_json(config: Config, book: UpstreamBook, scheme: str, port: int | None) -> list[dict[str, object]]:
    """Return every site with its targets, state and the config line it came from."""
    out: list[dict[str, object]] = []
    for site in config.sites:
        routes = []
        for route in site.routes:
            entry: dict[str, object] = {"prefix": route.prefix, "config": str(route.mark), "strip_prefix": route.strip_prefix}
            if isinstance(route.target, StaticRoot):
                entry.update(root=route.target.path, spa=route.target.spa)
            else:
                entry["upstreams"] = [
                    {"url": str(u), "tried": list(u.tried_addresses), "up": book.state(u).is_up, "error": book.state(u).last_error}
                    for u in route.target.addresses
                ]
                entry["preserve_host"] = route.target.preserve_host
            routes.append(entry)
        out.append(
            {
                "host": site.host,
                "url": site_url(site, scheme, port),
                "targets": site.target_lines(),
                "config": str(site.mark),
                "routes": routes,
            }
        )
    return out


def _sites_table(sites: Iterable[Site], book: UpstreamBook, scheme: str, port: int | None) -> str:
    rows = []
    for site in sites:
        url = site_url(site, scheme, port)
        name = f'<a href="{html.escape(url)}">{html.escape(site.host)}</a>' if url else html.escape(site.host)
        states = [book.state(u).is_up for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses]
        state = "static" if not states else ("up" if any(states) else "down" if states and all(s is False for s in states) else "not tried")
        state_class = state.replace(" ", "-")
        rows.append(
            f'<tr><td>{name}</td><td>{"<br>".join(html.escape(t) for t in site.target_lines())}</td>'
            f'<td><span class="state {state_class}">{state}</span></td><td class="mark">{html.escape(str(site.mark))}</td></tr>'
        )
    if not rows:
        return "<p>No sites yet. Add one to sites.yaml, for example <code>app1: 3000</code>.</p>"
    return "<table><thead><tr><th>Site</th><th>Target</th><th>State</th><th>Config</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def index_response(config: Config, config_error: str | None, book: UpstreamBook, accept: str, scheme: str, port: int | None, dashboard_url: str) -> web.Response:
    """Return the proxy's own page: every site with a link and target, and the config error if any."""
    if _wants(accept) == "json":
        return web.json_response(api_sites(config, config_error, book, scheme, port))
    if _wants(accept) == "text":
        lines = [f"{site.host}  ->  {', '.join(site.target_lines())}  ({site.mark})" for site in config.sites]
        if config_error:
            lines = [f"{config.file} was not loaded; still serving the last good config:", config_error, ""] + lines
        return web.Response(text="\n".join(lines or ["no sites configured"]) + "\n")
    banner = ""
    if config_error:
        banner = f"""<div class="banner"><strong>{html.escape(config.file)} was not loaded</strong>; the sites below are the last good config.
<pre>{html.escape(config_error)}</pre></div>"""
    body = f"""{banner}<h1>Sites</h1>
<p class="detail">Routed from <code>{html.escape(config.file)}</code>.</p>
{_sites_table(config.sites, book, scheme, port)}"""
    return web.Response(text=_page("Sites", body, dashboard_url), content_type="text/html", headers={"Cache-Control": "no-store"})


def unknown_site_response(host: str, config: Config, book: UpstreamBook, accept: str, scheme: str, port: int | None, dashboard_url: str) -> web.Response:
    """Return the 404 for an unconfigured *.localhost name: the sites that do exist, and how to add this one."""
    name = host.removesuffix(".localhost") if host.count(".") == 1 else host
    snippet = f"{name}: 3000"
    config_flag = "" if config.file in ("sites.yaml", "./sites.yaml") else f" --config {shlex.quote(config.file)}"
    command = f"localhost-proxy add {shlex.quote(name)} 3000{config_flag}"
    if _wants(accept) != "html":
        return problem_response(
            Problem(404, "No such site", f"{host} is not in {config.file}.", f"Add it with `{command}` (your app's port instead of 3000), or write `{snippet}` under sites:.", {"sites": [s.host for s in config.sites], "add": command}),
            accept,
            dashboard_url,
        )
    body = f"""<h1><span class="status">404</span> No site named {html.escape(host)}</h1>
<p class="detail">{html.escape(host)} is not in <code>{html.escape(config.file)}</code>.</p>
<p class="hint">To route it, run <code>{html.escape(command)}</code> with your app's port instead of 3000, or add <code>{html.escape(snippet)}</code> under <code>sites:</code>. The running proxy picks it up at once.</p>
<h2>Configured sites</h2>
{_sites_table(config.sites, book, scheme, port)}"""
    return web.Response(text=_page("No such site", body, dashboard_url), status=404, content_type="text/html", headers={"Cache-Control": "no-store"})
