"""The forwarding core: what to do with a request, and doing it through a front-end's response sink."""
