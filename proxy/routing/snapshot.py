"""Everything a request is judged by, built whole from one Config and swapped in as one reference.

A reload builds the next Snapshot completely (routing table, the certificates of sites that
bring their own, the paths no static root may serve) before anything changes, so a request
and a TLS handshake see the old snapshot or the new one, never parts of both. Pure data; the
server builds it (loading certificate files is I/O).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config.load import certs_folder
from proxy.config.model import Config
from proxy.routing.table import RoutingTable


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    table: RoutingTable
    site_contexts: Mapping[str, ssl.SSLContext]  # by site host: sites that bring their own certificate
    private_paths: frozenset[str]  # resolved files and folders no static root may serve


def private_paths(config: Config, ca_folder: str | None) -> frozenset[str]:
    """Return the resolved files and folders no static root may serve: the config, the CA's folder, sites' keys."""
    paths = [config.file, certs_folder(config.file)]
    if ca_folder is not None:
        paths.append(ca_folder)
    for site in config.sites:
        if site.tls is not None:
            paths += [site.tls.cert, site.tls.key]
    return frozenset(os.path.realpath(p) for p in paths)
