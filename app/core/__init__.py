"""Cross-cutting services of the backend: settings, logging, errors, security, middleware."""
