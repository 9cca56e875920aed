"""HTTP/1.1 to clients: a light reader for bodyless requests, aiohttp's server for the rest."""
