"""Pages served by the backend, with every asset shipped in ``static/`` (no CDN)."""
