"""The inspector's memory: body taps, the bounded ring, per-site counts. Pure, no sockets."""

from __future__ import annotations

from proxy.diagnostics.inspector import BODY_LIMIT, CAPACITY, HINT_LIMIT, BodyTap, Exchange, RecentCounts, RequestLog


def test_tap_counts_every_byte_and_keeps_only_the_start() -> None:
    tap = BodyTap(10)
    for chunk in (b"abcd", b"efghij", b"klmnop"):
        tap.feed(chunk)
    assert (bytes(tap.data), tap.size, tap.is_truncated) == (b"abcdefghij", 16, True)


def test_tap_with_no_limit_keeps_nothing_but_still_counts() -> None:
    tap = BodyTap(0)
    tap.feed(b"x" * 1000)
    assert (len(tap.data), tap.size) == (0, 1000)


def test_an_exchange_keeps_bodies_only_once_inspected() -> None:
    exchange = Exchange()
    exchange.request_body.feed(b"before")
    assert exchange.request_body.data == b""
    exchange.inspect()
    exchange.request_body.feed(b"a" * (BODY_LIMIT + 5))
    assert len(exchange.request_body.data) == BODY_LIMIT and exchange.request_body.is_truncated


def test_an_uninspected_refusal_keeps_enough_to_recognise_the_dev_server() -> None:
    refused, fine = Exchange(), Exchange()
    refused.response_started(403, "Forbidden", ())
    fine.response_started(200, "OK", ())
    for exchange in (refused, fine):
        exchange.response_body.feed(b"b" * (HINT_LIMIT * 2))
    assert (len(refused.response_body.data), len(fine.response_body.data)) == (HINT_LIMIT, 0)


def test_the_log_keeps_the_newest_capacity_exchanges() -> None:
    log = RequestLog()
    exchanges = [Exchange(target=f"/{i}") for i in range(CAPACITY + 20)]
    for exchange in exchanges:
        log.add(exchange)
    kept = log.newest_first()
    assert len(kept) == CAPACITY
    assert kept[0] is exchanges[-1] and kept[-1] is exchanges[20]
    assert log.get(exchanges[19].id) is None and log.get(exchanges[20].id) is exchanges[20]
    assert [e.id for e in exchanges[:3]] == [1, 2, 3]


def test_finish_tells_listeners_only_about_inspected_exchanges_and_counts_every_site_request() -> None:
    log = RequestLog()
    heard: list[Exchange] = []
    log.on_finish.append(heard.append)
    seen, unseen = Exchange(site="app1.localhost", status=200), Exchange(site="app1.localhost", status=502)
    seen.inspect()
    log.finish(seen, 1000.0)
    log.finish(unseen, 1000.5)
    log.finish(Exchange(site=None, status=404), 1000.5)  # an unknown name: no site to count it under
    assert heard == [seen]
    assert log.counts.last_minute("app1.localhost", 1001.0) == (2, 1)


def test_recent_counts_forget_what_is_older_than_a_minute() -> None:
    counts = RecentCounts()
    counts.add("a", 100.0, is_error=True)
    counts.add("a", 130.2, is_error=False)
    counts.add("a", 130.9, is_error=False)
    assert counts.last_minute("a", 131.0) == (3, 1)
    assert counts.last_minute("a", 160.5) == (2, 0)
    assert counts.last_minute("a", 191.0) == (0, 0)
    assert counts.last_minute("never", 131.0) == (0, 0)
    counts.forget_except({"b"})
    assert counts.last_minute("a", 131.0) == (0, 0)


def test_recent_counts_stay_bounded_under_steady_traffic() -> None:
    counts = RecentCounts()
    for tick in range(10_000):
        counts.add("a", 1000 + tick * 0.1, is_error=False)
    assert len(counts._buckets["a"]) <= RecentCounts.WINDOW + 1
