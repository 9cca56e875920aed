"""Reading sites.yaml from the disk: the file's text, and the disk checks parse_config asks for."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.config.model import Config
from proxy.config.parse import RootChecker, parse_config
from proxy.errors import ConfigError, ConfigErrors, Mark


def certs_folder(config_file: str) -> str:
    """Return the certs folder that belongs to a config file (the HTTPS issue keeps its CA there)."""
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), "certs")


def disk_root_checker(config_file: str) -> RootChecker:
    """Return a check_root that looks at the disk: the folder must exist and hold no secrets."""
    config_path = Path(config_file).resolve()
    certs = Path(certs_folder(config_file)).resolve()

    def check(path: str) -> str | None:
        root = Path(path)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            return f"root folder {path} {what}; create it or fix the path (relative paths start at the config file's folder)"
        resolved = root.resolve()
        if config_path.is_relative_to(resolved):
            return f"root folder {path} contains this config file; serve a subfolder such as ./public instead"
        if certs.is_relative_to(resolved):
            return f"root folder {path} contains the certs folder (private keys); serve a subfolder such as ./public instead"
        return None

    return check


def read_config_text(path: str) -> str:
    """Return a config file's text; raise FileNotFoundError, or ConfigErrors if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError(Mark(path, 1, 1), f"cannot read the file: {exc}")]) from None


def disk_file_check(path: str) -> str | None:
    """Return why a certificate or key file cannot be used, or None."""
    if not os.path.isfile(path):
        return f"{path} does not exist; fix the path (relative paths start at the config file's folder)"
    return None


def parse_config_file_text(text: str, path: str) -> Config:
    """Return the Config for text read from path, with static roots and certificate files checked on the disk."""
    return parse_config(text, path, check_root=disk_root_checker(path), check_file=disk_file_check)


def load_config(path: str) -> Config:
    """Read and parse a config file; raise ConfigErrors (a missing file included)."""
    try:
        text = read_config_text(path)
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(Mark(path, 1, 1), "no such file; create it (see the README's sites.yaml example) or pass --config FILE")]) from None
    return parse_config_file_text(text, path)
