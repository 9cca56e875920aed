"""Host refusals of dev servers, recognized from their real messages, and the fix each hint names."""

from __future__ import annotations

import gzip
import random

import pytest

from proxy.diagnostics.hosthints import detect_host_refusal

HOST = "app1.localhost"

VITE = b"""Blocked request. This host ("app1.localhost") is not allowed.
To allow this host, add "app1.localhost" to `server.allowedHosts` in vite.config.js."""
VITE_PREVIEW = VITE.replace(b"server.allowedHosts", b"preview.allowedHosts")
DJANGO_DEBUG_HTML = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta http-equiv="content-type" content="text/html; charset=utf-8">
  <meta name="robots" content="NONE,NOARCHIVE">
  <title>DisallowedHost
          at /</title>
</head>
<body>
<div id="summary">
  <h1>DisallowedHost
       at /</h1>
  <pre class="exception_value">Invalid HTTP_HOST header: &#x27;app1.localhost:7080&#x27;. You may need to add &#x27;app1.localhost&#x27; to ALLOWED_HOSTS.</pre>
"""
DJANGO_DEBUG_TEXT = b"""DisallowedHost at /
Invalid HTTP_HOST header: 'app1.localhost:7080'. You may need to add 'app1.localhost' to ALLOWED_HOSTS.

Request Method: GET
Request URL: http://app1.localhost:7080/
"""
RAILS_TEXT = b"""Blocked hosts: app1.localhost

To allow requests to these hosts, make sure they are valid hostnames (containing only numbers, letters, dashes and dots), then add the following to your environment configuration:

  config.hosts << "app1.localhost"
"""
RAILS_OLD_HTML = b"""<header>
  <h1>Blocked host: app1.localhost</h1>
</header>
<main role="main" id="container">
  <h2>To allow requests to app1.localhost, add the following to your environment configuration:</h2>
  <pre>config.hosts &lt;&lt; "app1.localhost"</pre>
</main>
"""
NOISE = random.Random(0).randbytes(4096)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "server", "fix"),
    [
        (403, "text/plain", VITE, "Vite", "`server: { allowedHosts: ['.localhost'] }` to vite.config"),
        (403, "text/plain", VITE_PREVIEW, "Vite", "`preview: { allowedHosts: ['.localhost'] }`"),
        (400, "text/html; charset=utf-8", DJANGO_DEBUG_HTML, "Django", "`ALLOWED_HOSTS += ['.localhost']` to settings.py"),
        (400, "text/plain; charset=utf-8", DJANGO_DEBUG_TEXT, "Django", "ALLOWED_HOSTS"),
        (400, "text/html; charset=utf-8", gzip.compress(DJANGO_DEBUG_HTML * 50)[:300], "Django", "ALLOWED_HOSTS"),
        (403, "", b"Invalid Host header", "webpack-dev-server", "`devServer: { allowedHosts: ['.localhost'] }`"),
        (200, "text/html; charset=utf-8", b"Invalid Host header", "webpack-dev-server", "ng serve --allowed-hosts .localhost"),
        (403, "text/plain; charset=utf-8", RAILS_TEXT, "Rails", '`config.hosts << ".localhost"` to config/environments/development.rb'),
        (403, "text/html; charset=utf-8", RAILS_OLD_HTML, "Rails", "config.hosts"),
        (400, "text/plain; charset=utf-8", b"Invalid host header", "Starlette", "`'*.localhost'` to allowed_hosts"),
    ],
    ids=[
        "vite",
        "vite-preview",
        "django-debug-html",
        "django-debug-text",
        "django-gzip-truncated",
        "webpack",
        "webpack-old-200",
        "rails",
        "rails-old",
        "starlette",
    ],
)
def test_refusal_names_server_host_and_fix(status: int, content_type: str, body: bytes, server: str, fix: str) -> None:
    refusal = detect_host_refusal(status, content_type, body, HOST)
    assert refusal is not None
    assert refusal.server == server
    assert f"refused the Host {HOST}: " in refusal.hint
    assert fix in refusal.hint
    assert refusal.hint.endswith("(or set preserve_host: false for this site in sites.yaml)")


def test_host_outside_localhost_is_allowed_by_exact_name() -> None:
    refusal = detect_host_refusal(403, "text/plain", VITE.replace(b"app1.localhost", b"shop.test"), "shop.test:7080")
    assert refusal is not None
    assert "allowedHosts: ['shop.test']" in refusal.hint


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (403, "text/html", b"<h1>Forbidden</h1><p>You don't have permission to access this resource.</p>"),
        (404, "text/plain", VITE),
        (500, "text/html", DJANGO_DEBUG_HTML),
        (400, "text/html", b"<h1>Bad Request (400)</h1>"),
        (400, "application/json", b'{"error": "invalid_request", "detail": "the host field of the webhook is required"}'),
        (403, "text/plain", b"Invalid Host header: expected api.example.com"),
        (200, "text/html", b"<p>webpack-dev-server answers Invalid Host header when allowedHosts does not list the name.</p>" * 3),
        (200, "application/json", b"Invalid Host header"),
        (403, "text/plain", b""),
        (400, "", b""),
        (200, "", b""),
        (400, "application/octet-stream", NOISE),
        (403, "text/html", b"\x1f\x8b" + NOISE),
        (200, "", NOISE[:10]),
    ],
    ids=[
        "plain-403",
        "404",
        "500",
        "django-without-debug",
        "json-mentions-host",
        "longer-host-message",
        "long-200",
        "200-json",
        "empty-403",
        "empty-400",
        "empty-200",
        "random-bytes",
        "broken-gzip",
        "short-random-200",
    ],
)
def test_other_responses_are_not_refusals(status: int, content_type: str, body: bytes) -> None:
    assert detect_host_refusal(status, content_type, body, HOST) is None
