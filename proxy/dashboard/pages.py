"""The dashboard's own pages: the index with every site and the request inspector, and /api/sites. Pure.

Each answer comes as HTML, JSON or plain text by the client's Accept header. Every value is
html.escape'd: site names and paths come from requests and from the user's file.
"""

from __future__ import annotations

import html

from proxy.config.model import Config, StaticRoot
from proxy.forwarding.answer import NO_STORE, Answer, html_answer, json_answer, text_answer
from proxy.forwarding.health import UpstreamHealth
from proxy.forwarding.pages import Activity, html_page, site_state, site_url, sites_table, wants


def api_sites(
    config: Config, config_error: str | None, health: UpstreamHealth, scheme: str, port: int | None, activity: Activity | None = None
) -> dict[str, object]:
    """Return the /api/sites document: the config file, why its latest save was not loaded (or null), the sites."""
    return {
        "config": config.file,
        "config_error": config_error,
        "config_errors": config_error.splitlines() if config_error else [],
        "sites": sites_json(config, health, scheme, port, activity or {}),
    }


def sites_json(config: Config, health: UpstreamHealth, scheme: str, port: int | None, activity: Activity | None = None) -> list[dict[str, object]]:
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
                    {"url": str(u), "tried": list(u.tried_addresses), "up": health.state(u).is_up, "error": health.state(u).last_error}
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
                "state": site_state(site, health),
                "requests_last_minute": requests,
                "errors_last_minute": errors,
                "inspect": site.inspect,
                "config": str(site.mark),
                "routes": routes,
            }
        )
    return out


def _config_banner(config: Config, config_error: str | None) -> str:
    hidden = "" if config_error else " hidden"
    return f"""<div class="banner" id="config-error"{hidden}><strong><span id="config-file">{html.escape(config.file)}</span> was not loaded</strong>; the sites below are the last good config.
<pre>{html.escape(config_error or "")}</pre></div>"""


def index_answer(
    config: Config,
    config_error: str | None,
    health: UpstreamHealth,
    accept: str,
    scheme: str,
    port: int | None,
    dashboard_url: str,
    activity: Activity | None = None,
) -> Answer:
    """Return the dashboard: every site with its state and traffic, the config error if any, and the request inspector."""
    activity = activity or {}
    if wants(accept) == "json":
        return json_answer(200, api_sites(config, config_error, health, scheme, port, activity), NO_STORE)
    if wants(accept) == "text":
        lines = [f"{site.host}  ->  {', '.join(site.target_lines())}  ({site.mark})" for site in config.sites]
        if config_error:
            lines = [f"{config.file} was not loaded; still serving the last good config:", config_error, "", *lines]
        return text_answer(200, "\n".join(lines or ["no sites configured"]) + "\n", NO_STORE)
    body = f"""{_config_banner(config, config_error)}<h1>Sites <span class="live" id="live" title="updates live">connecting…</span></h1>
<p class="detail">Routed from <code>{html.escape(config.file)}</code>. State is checked every 2 s while this page is open. <button type="button" id="check-now">Check now</button></p>
<div id="sites-holder">{sites_table(config.sites, health, scheme, port, activity)}</div>
{_INSPECTOR}"""
    return html_answer(200, html_page("Dashboard", body, dashboard_url, head='\n<script src="/assets/dashboard.js" defer></script>', wide=True), NO_STORE)


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
