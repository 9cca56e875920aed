"""The proxy's own pages: index, 404 and 502/504 pages, and the JSON API behind them."""
