"""The interactive API docs load only assets the backend itself serves (no CDN)."""

from __future__ import annotations

import re

from qa.client import ApiClient


def test_docs_page_references_only_local_assets(client: ApiClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, "the docs page should load its script and stylesheet"
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset} is not served by the backend"
        assert client.get(asset).status_code == 200, asset
    assert "cdn" not in page.text.lower()


def test_oauth2_redirect_page_is_self_contained(client: ApiClient) -> None:
    page = client.get("/docs/oauth2-redirect")
    assert page.status_code == 200
    assert not re.search(r'(?:src|href)="https?://', page.text)
