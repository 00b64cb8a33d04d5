"""The HTTP API: dependencies and thin routers."""
