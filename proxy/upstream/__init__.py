"""The HTTP/1.1 client every forwarded request goes through: pooled keep-alive connections per upstream."""
