"""Queries, one module per aggregate. Account-scoped reads take the caller's scope."""
