"""The proxy's own error answers (400 to 508) and the page frame every HTML answer shares. Pure.

Each answer comes as HTML, JSON or plain text by the client's Accept header. Every value is
html.escape'd: site names and paths come from requests and from the user's file.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

from proxy.config.model import Config, Site, Upstreams
from proxy.forwarding.answer import NO_STORE, Answer, html_answer, json_answer, text_answer
from proxy.forwarding.decide import PROBE_HEADER
from proxy.forwarding.health import UpstreamHealth

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


def wants(accept: str) -> str:
    """Return "html", "json" or "text": what a client's Accept field asks for first."""
    accept = accept.lower()
    if "text/html" in accept:
        return "html"
    if "application/json" in accept or "+json" in accept:
        return "json"
    return "text"


def html_page(title: str, body: str, dashboard_url: str, *, head: str = "", wide: bool = False) -> str:
    """Return a whole HTML page in the proxy's frame: its style and a link back to the dashboard."""
    main_class = ' class="wide"' if wide else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · localhost-proxy</title>{head}
<style>{_STYLE}</style></head>
<body><header><a class="brand" href="{html.escape(dashboard_url)}">localhost-proxy</a></header>
<main{main_class}>{body}</main></body></html>
"""


def problem_answer(problem: Problem, accept: str, dashboard_url: str, *, last: bool = False) -> Answer:
    """Return a Problem as HTML, JSON or plain text, as the client asked."""
    kind = wants(accept)
    if kind == "json":
        payload = {"error": problem.title, "detail": problem.detail, "hint": problem.hint, **problem.facts}
        return json_answer(problem.status, payload, NO_STORE)._replace(last=last)
    if kind == "text":
        lines = [f"{problem.status} {problem.title}", problem.detail]
        lines += [f"{key}: {', '.join(v) if isinstance(v, list) else v}" for key, v in problem.facts.items()]
        if problem.hint:
            lines.append(problem.hint)
        return text_answer(problem.status, "\n".join(lines) + "\n", NO_STORE)._replace(last=last)
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(', '.join(v) if isinstance(v, list) else v)}</dd>" for k, v in problem.facts.items())
    body = f"""<h1><span class="status">{problem.status}</span> {html.escape(problem.title)}</h1>
<p class="detail">{html.escape(problem.detail)}</p>
{f'<p class="hint">{html.escape(problem.hint)}</p>' if problem.hint else ""}
{f"<dl>{facts}</dl>" if facts else ""}
{_WAIT_FOR_UPSTREAM if problem.reload_when_ready else ""}
<p><a href="{html.escape(dashboard_url)}">All sites</a></p>"""
    return html_answer(problem.status, html_page(problem.title, body, dashboard_url), NO_STORE)._replace(last=last)


# Start the proxy first and the app later: the error page asks the proxy (not the app) every
# second whether the upstream accepts yet, and turns into the app as soon as it does.
_WAIT_FOR_UPSTREAM = f"""<p class="waiting" id="waiting">Waiting for the app: this page reloads by itself once it accepts connections.</p>
<script>
(function poll() {{
  setTimeout(function () {{
    fetch(location.href, {{headers: {{"{PROBE_HEADER}": "ready"}}, cache: "no-store"}})
      .then(function (r) {{ if (r.status === 200) location.reload(); else poll(); }}, poll);
  }}, 1000);
}})();
</script>"""


def bare_not_found() -> Answer:
    """Return the 404 for a foreign Host: nothing about sites, paths or addresses."""
    return text_answer(404, "Not Found\n", NO_STORE)


def site_url(site: Site, scheme: str, port: int | None) -> str | None:
    """Return the address a browser opens for a site, or None for a wildcard."""
    if site.is_wildcard:
        return None
    return f"{scheme}://{site.host}" + (f":{port}" if port else "")


Activity = dict[str, tuple[int, int]]  # site host -> (requests, errors) in the last minute


def site_state(site: Site, health: UpstreamHealth) -> str:
    """Return "up" (some upstream answers), "down" (none does), "not tried" or "static"."""
    states = [health.state(u).is_up for r in site.routes if isinstance(r.target, Upstreams) for u in r.target.addresses]
    if not states:
        return "static"
    if any(states):
        return "up"
    return "down" if all(s is False for s in states) else "not tried"


def sites_table(sites: Iterable[Site], health: UpstreamHealth, scheme: str, port: int | None, activity: Activity) -> str:
    """Return the HTML table of sites (name, targets, state, traffic, config line) the dashboard and the 404 show."""
    rows = []
    for site in sites:
        url = site_url(site, scheme, port)
        name = f'<a href="{html.escape(url)}">{html.escape(site.host)}</a>' if url else html.escape(site.host)
        state = site_state(site, health)
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


def unknown_site_answer(host: str, config: Config, health: UpstreamHealth, accept: str, scheme: str, port: int | None, dashboard_url: str) -> Answer:
    """Return the 404 for an unconfigured *.localhost name: the sites that do exist, and how to add this one."""
    name = host.removesuffix(".localhost") if host.count(".") == 1 else host
    snippet = f"{name}: 3000"
    config_flag = "" if config.file in ("sites.yaml", "./sites.yaml") else f" --config {shlex.quote(config.file)}"
    command = f"localhost-proxy add {shlex.quote(name)} 3000{config_flag}"
    if wants(accept) != "html":
        return problem_answer(
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
{sites_table(config.sites, health, scheme, port, {})}"""
    return html_answer(404, html_page("No such site", body, dashboard_url), NO_STORE)
