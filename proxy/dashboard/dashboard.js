// The dashboard's live parts: site states and traffic, and the request inspector.
// Plain JavaScript served by the proxy itself; no build step, nothing fetched from elsewhere.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_ROWS = 500;
  const state = { requests: [], selected: null, sites: [] };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // Links follow the address this page was opened with, so they work over HTTP and HTTPS alike.
  function siteLink(host) {
    if (host.startsWith("*.")) return host;
    const port = location.port ? ":" + location.port : "";
    return el("a", { href: location.protocol + "//" + host + port + "/" }, host);
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }

  // ------------------------------------------------------------ sites

  function renderSites(doc) {
    state.sites = doc.sites;
    const banner = $("config-error");
    banner.hidden = !doc.config_error;
    banner.querySelector("pre").textContent = doc.config_error || "";
    $("config-file").textContent = doc.config;
    const holder = $("sites-holder");
    if (!doc.sites.length) {
      holder.replaceChildren(el("p", { id: "no-sites" }, "No sites yet. Add one to sites.yaml, for example ", el("code", {}, "app1: 3000"), "."));
    } else {
      const rows = doc.sites.map((site) =>
        el("tr", { "data-host": site.host },
          el("td", {}, siteLink(site.host)),
          el("td", {}, ...site.targets.flatMap((t, i) => (i ? [el("br"), t] : [t]))),
          el("td", {}, el("span", { class: "state " + site.state.replace(" ", "-"), title: upstreamErrors(site) }, site.state)),
          el("td", { class: "num" }, String(site.requests_last_minute),
            site.errors_last_minute ? el("span", { class: "errors" }, " (" + site.errors_last_minute + " failed)") : null),
          el("td", { class: "mark" }, site.config)));
      holder.replaceChildren(el("table", { id: "sites" },
        el("thead", {}, el("tr", {}, ...["Site", "Target", "State", "Last minute", "Config"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
    }
    const select = $("filter-site");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "all sites"), ...doc.sites.map((s) => el("option", { value: s.host }, s.host)));
    select.value = chosen;
  }

  function upstreamErrors(site) {
    const errors = [];
    for (const route of site.routes) for (const u of route.upstreams || []) if (u.error) errors.push(u.url + ": " + u.error);
    return errors.join("\n");
  }

  // ------------------------------------------------------------ request list

  function matchesFilters(r) {
    const site = $("filter-site").value;
    const status = $("filter-status").value;
    if (site && r.site !== site && r.host !== site) return false;
    if (!status) return true;
    if (status === "failed") return r.state === "aborted" || (r.status || 0) >= 500;
    return Math.floor((r.status || 0) / 100) === Number(status[0]);
  }

  function requestRow(r) {
    const statusText = r.status ? String(r.status) : r.state;
    const statusClass = !r.status || r.status >= 500 ? "bad" : r.status >= 400 ? "warn" : "good";
    return el("tr", { "data-id": r.id, class: r.id === state.selected ? "selected" : "", onclick: () => openRequest(r.id) },
      el("td", { class: "mark" }, r.time.slice(11, 23)),
      el("td", {}, r.method),
      el("td", {}, r.host),
      el("td", { class: "path" }, r.path, r.replay_of ? el("span", { class: "tag" }, "replay of #" + r.replay_of) : null,
        r.hint ? el("span", { class: "tag warn" }, "host refused") : null),
      el("td", { class: "status " + statusClass }, statusText),
      el("td", { class: "num" }, r.duration_ms === null ? "…" : r.duration_ms + " ms"),
      el("td", { class: "num" }, formatBytes(r.response_bytes)),
      el("td", { class: "mark" }, r.upstream || ""));
  }

  function renderRequests() {
    const shown = state.requests.filter(matchesFilters);
    $("requests").querySelector("tbody").replaceChildren(...shown.map(requestRow));
    $("requests-empty").hidden = shown.length > 0;
  }

  function addRequest(r) {
    state.requests = [r, ...state.requests.filter((x) => x.id !== r.id)].slice(0, MAX_ROWS);
    renderRequests();
  }

  async function loadRequests() {
    const answer = await fetch("/api/requests", { cache: "no-store" });
    if (answer.ok) {
      state.requests = (await answer.json()).requests;
      renderRequests();
    }
  }

  // ------------------------------------------------------------ one request

  function secretsQuery() {
    return $("show-secrets").checked ? "?secrets=show" : "";
  }

  function headersTable(headers) {
    if (!headers.length) return el("p", { class: "detail" }, "no headers");
    return el("table", { class: "headers" }, el("tbody", {}, ...headers.map(([n, v]) => el("tr", {}, el("th", {}, n), el("td", {}, v)))));
  }

  function bodyBlock(body) {
    const facts = [body.kind, formatBytes(body.size)];
    if (body.truncated) facts.push("first " + formatBytes(body.captured) + " shown");
    if (body.note) facts.push(body.note);
    return el("div", { class: "body" },
      el("p", { class: "detail" }, "Body: " + facts.join(", ")),
      body.text ? el("pre", { class: "body-" + body.kind.replace(" ", "-") }, body.text) : null);
  }

  async function openRequest(id) {
    state.selected = id;
    for (const row of document.querySelectorAll("#requests tbody tr")) row.classList.toggle("selected", Number(row.dataset.id) === id);
    const answer = await fetch("/api/requests/" + id + secretsQuery(), { cache: "no-store" });
    const panel = $("request-detail");
    panel.hidden = false;
    if (!answer.ok) {
      panel.replaceChildren(el("p", { class: "detail" }, (await answer.json()).detail));
      return;
    }
    renderDetail(await answer.json());
  }

  function renderDetail(d) {
    const panel = $("request-detail");
    const result = el("div", { id: "replay-result" });
    const response = d.response;
    panel.replaceChildren();
    panel.append(el("div", {},
      el("h2", {}, "#" + d.id + " " + d.method + " " + d.host + d.path),
      el("p", { class: "detail" },
        (response ? response.status + " " + response.reason : d.state) +
        (d.duration_ms !== null ? " · " + d.duration_ms + " ms" : "") +
        (d.upstream ? " · from " + d.upstream : "") + (d.note ? " · " + d.note : "")),
      d.hint ? el("p", { class: "hint", id: "host-hint" }, d.hint) : null,
      el("div", { class: "actions" },
        el("button", { type: "button", id: "replay", disabled: d.can_replay ? null : "disabled", title: d.replay_refusal || "", onclick: () => replay(d, {}, result) }, "Replay"),
        el("button", { type: "button", id: "edit-replay", onclick: () => showEditor(d, result) }, "Edit and replay"),
        el("button", { type: "button", id: "copy-curl", onclick: () => copyCurl(d) }, "Copy as curl")),
      d.can_replay ? null : el("p", { class: "detail", id: "replay-refusal" }, d.replay_refusal),
      el("div", { id: "editor-holder" }),
      result,
      el("h3", {}, "Request"),
      headersTable(d.request.headers),
      bodyBlock(d.request.body),
      el("h3", {}, "Response"),
      response ? headersTable(response.headers) : el("p", { class: "detail" }, "No response yet."),
      response ? bodyBlock(response.body) : null,
      el("h3", {}, "As curl"),
      el("pre", { id: "curl" }, d.curl),
      d.curl_note ? el("p", { class: "detail" }, d.curl_note) : null));
  }

  function showEditor(d, result) {
    const body = d.request.body;
    const bodyText = body.kind === "text" || body.kind === "json" || body.kind === "empty" ? body.text : "";
    const form = el("form", { id: "editor", class: "editor" },
      el("label", {}, "Method ", el("input", { name: "method", value: d.method, size: "8" })),
      el("label", {}, "Path ", el("input", { name: "path", value: d.path, size: "60" })),
      el("label", { class: "block" }, "Headers, one per line (values shown as [redacted] are sent as captured)",
        el("textarea", { name: "headers", rows: "6" })),
      el("label", { class: "block" }, "Body", el("textarea", { name: "body", rows: "6" })),
      el("div", { class: "actions" },
        el("button", { type: "submit", id: "send-edit" }, "Send"),
        el("button", { type: "button", onclick: () => form.remove() }, "Cancel")));
    form.elements.headers.value = d.request.headers
      .filter(([n]) => !["host", "content-length", "connection", "transfer-encoding", "expect"].includes(n.toLowerCase()))
      .map(([n, v]) => n + ": " + v).join("\n");
    form.elements.body.value = bodyText;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const headers = form.elements.headers.value.split("\n").filter((l) => l.includes(":"))
        .map((l) => [l.slice(0, l.indexOf(":")).trim(), l.slice(l.indexOf(":") + 1).trim()]);
      replay(d, { method: form.elements.method.value, path: form.elements.path.value, headers, body: form.elements.body.value }, result);
    });
    $("editor-holder").replaceChildren(form);
  }

  async function replay(d, edit, result) {
    result.replaceChildren(el("p", { class: "detail" }, "Sending…"));
    const answer = await fetch("/api/requests/" + d.id + "/replay", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(edit),
    });
    const payload = await answer.json();
    if (!answer.ok) {
      result.replaceChildren(el("p", { class: "banner", id: "replay-error" }, payload.detail));
      return;
    }
    const r = payload.request;
    addRequest(r);
    result.replaceChildren(el("p", { class: "hint", id: "replay-outcome" },
      "Replayed as #" + r.id + ": " + (r.status || r.state) + (r.duration_ms !== null ? " in " + r.duration_ms + " ms " : " "),
      el("a", { href: "#", onclick: (e) => { e.preventDefault(); openRequest(r.id); } }, "open")));
  }

  async function copyCurl(d) {
    try {
      await navigator.clipboard.writeText(d.curl);
      $("copy-curl").textContent = "Copied";
    } catch (e) {
      // Clipboard access needs a secure context or permission; select the text for a manual copy.
      const range = document.createRange();
      range.selectNodeContents($("curl"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("copy-curl").textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { const b = $("copy-curl"); if (b) b.textContent = "Copy as curl"; }, 2000);
  }

  // ------------------------------------------------------------ live updates

  function connect() {
    const events = new EventSource("/api/events");
    events.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "live on"; });
    events.addEventListener("error", () => { $("live").textContent = "reconnecting…"; $("live").className = "live"; });
    events.addEventListener("sites", (e) => renderSites(JSON.parse(e.data)));
    events.addEventListener("request", (e) => addRequest(JSON.parse(e.data)));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("filter-site").addEventListener("change", renderRequests);
    $("filter-status").addEventListener("change", renderRequests);
    $("show-secrets").addEventListener("change", () => { if (state.selected !== null) openRequest(state.selected); });
    $("check-now").addEventListener("click", async () => {
      const answer = await fetch("/api/sites?check=1", { cache: "no-store" });
      if (answer.ok) renderSites(await answer.json());
    });
    loadRequests();
    connect();
  });
})();
