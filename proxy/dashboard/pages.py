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

from proxy.config.model import Config, Site, StaticRoot, Upstreams
from proxy.forwarding.health import UpstreamBook

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


def _page(title: str, body: str, dashboard_url: str, *, head: str = "", wide: bool = False) -> str:
    main_class = ' class="wide"' if wide else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · localhost-proxy</title>{head}
<style>{_STYLE}</style></head>
<body><header><a class="brand" href="{html.escape(dashboard_url)}">localhost-proxy</a></header>
<main{main_class}>{body}</main></body></html>
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
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(', '.join(v) if isinstance(v, list) else v)}</dd>" for k, v in problem.facts.items())
    body = f"""<h1><span class="status">{problem.status}</span> {html.escape(problem.title)}</h1>
<p class="detail">{html.escape(problem.detail)}</p>
{f'<p class="hint">{html.escape(problem.hint)}</p>' if problem.hint else ""}
{f"<dl>{facts}</dl>" if facts else ""}
{_WAIT_FOR_UPSTREAM if problem.reload_when_ready else ""}
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


Activity = dict[str, tuple[int, int]]  # site host -> (requests, errors) in the last minute


def api_sites(
    config: Config, config_error: str | None, book: UpstreamBook, scheme: str, port: int | None, activity: Activity | None = None
) -> dict[str, object]:
    """Return the /api/sites document: the config file, why its latest save was not loaded (or null), the sites."""
    return {
        "config": config.file,
        "config_error": config_error,
        "config_errors": config_error.splitlines() if config_error else [],
        "sites": sites_json(config, book, scheme, port, activity or {}),
    }


def site_state(site: Site, book: UpstreamBook) -> str:
    """Return "up" (some upstream answers), "down" (none does), "not tried" or "static"."""
    states = [book.state(u).is_up for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses]
    if not states:
        return "static"
    if any(states):
        return "up"
    return "down" if all(s is False for s in states) else "not tried"


def sites_json(config: Config, book: UpstreamBook, scheme: str, port: int | None, activity: Activity | None = None) -> list[dict[str, object]]:
    """Return every site with its targets, state, recent traffic and the config line it came from."""
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
        requests, errors = (activity or {}).get(site.host, (0, 0))
        out.append(
            {
                "host": site.host,
                "url": site_url(site, scheme, port),
                "targets": site.target_lines(),
                "state": site_state(site, book),
                "requests_last_minute": requests,
                "errors_last_minute": errors,
                "inspect": site.inspect,
                "config": str(site.mark),
                "routes": routes,
            }
        )
    return out


def _sites_table(sites: Iterable[Site], book: UpstreamBook, scheme: str, port: int | None, activity: Activity) -> str:
    rows = []
    for site in sites:
        url = site_url(site, scheme, port)
        name = f'<a href="{html.escape(url)}">{html.escape(site.host)}</a>' if url else html.escape(site.host)
        state = site_state(site, book)
        requests, errors = activity.get(site.host, (0, 0))
        rows.append(
            f'<tr data-host="{html.escape(site.host)}"><td>{name}</td><td>{"<br>".join(html.escape(t) for t in site.target_lines())}</td>'
            f'<td><span class="state {state.replace(" ", "-")}">{state}</span></td>'
            f'<td class="num">{requests}{f" <span class=errors>({errors} failed)</span>" if errors else ""}</td>'
            f'<td class="mark">{html.escape(str(site.mark))}</td></tr>'
        )
    if not rows:
        return '<p id="no-sites">No sites yet. Add one to sites.yaml, for example <code>app1: 3000</code>.</p>'
    return (
        '<table id="sites"><thead><tr><th>Site</th><th>Target</th><th>State</th><th>Last minute</th><th>Config</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def _config_banner(config: Config, config_error: str | None) -> str:
    hidden = "" if config_error else " hidden"
    return f"""<div class="banner" id="config-error"{hidden}><strong><span id="config-file">{html.escape(config.file)}</span> was not loaded</strong>; the sites below are the last good config.
<pre>{html.escape(config_error or "")}</pre></div>"""


def index_response(
    config: Config,
    config_error: str | None,
    book: UpstreamBook,
    accept: str,
    scheme: str,
    port: int | None,
    dashboard_url: str,
    activity: Activity | None = None,
) -> web.Response:
    """Return the dashboard: every site with its state and traffic, the config error if any, and the request inspector."""
    activity = activity or {}
    if _wants(accept) == "json":
        return web.json_response(api_sites(config, config_error, book, scheme, port, activity))
    if _wants(accept) == "text":
        lines = [f"{site.host}  ->  {', '.join(site.target_lines())}  ({site.mark})" for site in config.sites]
        if config_error:
            lines = [f"{config.file} was not loaded; still serving the last good config:", config_error, "", *lines]
        return web.Response(text="\n".join(lines or ["no sites configured"]) + "\n")
    body = f"""{_config_banner(config, config_error)}<h1>Sites <span class="live" id="live" title="updates live">connecting…</span></h1>
<p class="detail">Routed from <code>{html.escape(config.file)}</code>. State is checked every 2 s while this page is open. <button type="button" id="check-now">Check now</button></p>
<div id="sites-holder">{_sites_table(config.sites, book, scheme, port, activity)}</div>
{_INSPECTOR}"""
    return web.Response(
        text=_page("Dashboard", body, dashboard_url, head='\n<script src="/assets/dashboard.js" defer></script>', wide=True),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


_INSPECTOR = """<h2>Requests</h2>
<div class="filters">
  <label>Site <select id="filter-site"><option value="">all sites</option></select></label>
  <label>Status <select id="filter-status">
    <option value="">any status</option><option value="2xx">2xx</option><option value="3xx">3xx</option>
    <option value="4xx">4xx</option><option value="5xx">5xx</option><option value="failed">failed</option>
  </select></label>
  <label><input type="checkbox" id="show-secrets"> show secret headers</label>
</div>
<table id="requests"><thead><tr><th>Time</th><th>Method</th><th>Host</th><th>Path</th><th>Status</th><th class="num">Duration</th><th class="num">Size</th><th>Upstream</th></tr></thead>
<tbody></tbody></table>
<p class="detail" id="requests-empty">No requests yet. Requests to your sites show up here as they happen (the last 500 are kept).</p>
<section id="request-detail" hidden></section>"""


def unknown_site_response(host: str, config: Config, book: UpstreamBook, accept: str, scheme: str, port: int | None, dashboard_url: str) -> web.Response:
    """Return the 404 for an unconfigured *.localhost name: the sites that do exist, and how to add this one."""
    name = host.removesuffix(".localhost") if host.count(".") == 1 else host
    snippet = f"{name}: 3000"
    config_flag = "" if config.file in ("sites.yaml", "./sites.yaml") else f" --config {shlex.quote(config.file)}"
    command = f"localhost-proxy add {shlex.quote(name)} 3000{config_flag}"
    if _wants(accept) != "html":
        return problem_response(
            Problem(
                404,
                "No such site",
                f"{host} is not in {config.file}.",
                f"Add it with `{command}` (your app's port instead of 3000), or write `{snippet}` under sites:.",
                {"sites": [s.host for s in config.sites], "add": command},
            ),
            accept,
            dashboard_url,
        )
    body = f"""<h1><span class="status">404</span> No site named {html.escape(host)}</h1>
<p class="detail">{html.escape(host)} is not in <code>{html.escape(config.file)}</code>.</p>
<p class="hint">To route it, run <code>{html.escape(command)}</code> with your app's port instead of 3000, or add <code>{html.escape(snippet)}</code> under <code>sites:</code>. The running proxy picks it up at once.</p>
<h2>Configured sites</h2>
{_sites_table(config.sites, book, scheme, port, {})}"""
    return web.Response(text=_page("No such site", body, dashboard_url), status=404, content_type="text/html", headers={"Cache-Control": "no-store"})
