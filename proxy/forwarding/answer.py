"""The proxy's own answers (error pages, the dashboard, redirects): status, fields and a whole body. Pure.

Small and complete by nature, so they go to a front-end in one send_whole(); the front-end
adds the framing (length, connection handling) for its protocol.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import NamedTuple

from proxy.forwarding.contract import Field, ResponseSink

NO_STORE: Field = (b"Cache-Control", b"no-store")


class Answer(NamedTuple):
    status: int
    fields: list[Field]
    body: bytes = b""
    last: bool = False  # what follows on this connection cannot be trusted: take no further request

    def send(self, sink: ResponseSink) -> None:
        """Send this answer through a front-end's sink, with the Date every response carries."""
        sink.send_whole(self.status, "", [*self.fields, date_field()], self.body, last=self.last)


def text_answer(status: int, text: str, *fields: Field) -> Answer:
    return Answer(status, [(b"Content-Type", b"text/plain; charset=utf-8"), *fields], text.encode("utf-8"))


def html_answer(status: int, html: str, *fields: Field) -> Answer:
    return Answer(status, [(b"Content-Type", b"text/html; charset=utf-8"), *fields], html.encode("utf-8"))


def json_answer(status: int, payload: object, *fields: Field) -> Answer:
    return Answer(status, [(b"Content-Type", b"application/json; charset=utf-8"), *fields], json.dumps(payload, indent=2).encode("utf-8"))


def empty_answer(status: int, *fields: Field) -> Answer:
    return Answer(status, list(fields))


_date_cache: tuple[int, Field] = (0, (b"Date", b""))


def date_field() -> Field:
    """Return a Date field for now (RFC 9110 6.6.1), formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, (b"Date", formatdate(now, usegmt=True).encode("ascii")))
    return _date_cache[1]
