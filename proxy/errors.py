"""Errors a user can fix. Only cli.py turns them into stderr lines and exit status 2."""

from __future__ import annotations

from dataclasses import dataclass


class ProxyError(Exception):
    """Something the user can fix; the message says what and how."""


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in a config file, 1-based as editors show it."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class ConfigError(ProxyError):
    """One problem in sites.yaml, read as `FILE:LINE:COL: message`."""

    def __init__(self, mark: Mark, message: str) -> None:
        super().__init__(f"{mark}: {message}")
        self.mark = mark
        self.message = message


class ConfigErrors(ProxyError):
    """Every problem found in one config file, in file order."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.mark.line, e.mark.col))
        super().__init__("\n".join(str(e) for e in self.errors))


class ListenError(ProxyError):
    """A listen address that cannot be used (in use, not loopback, unparsable)."""
