"""localhost-proxy: reach local dev servers by name (app1.localhost) instead of by port."""

__version__ = "0.1.0"
