"""Over HTTP, on a backend that refuses the passwords the API's examples print (staging and
production do by default): creating a user with one answers 422 at the password's pointer and
creates nothing; another password works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.core.example_passwords import EXAMPLE_PASSWORD
from qa.client import ApiClient
from qa.launcher import LaunchedBackend

API = "/api/v1"


@pytest.fixture(scope="module")
def refusing() -> Iterator[LaunchedBackend]:
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_AUTH__REFUSE_EXAMPLE_PASSWORDS": "true"}
    )
    try:
        yield backend
    finally:
        backend.stop()


def test_an_example_password_is_refused_and_changes_nothing(refusing: LaunchedBackend) -> None:
    admin = ApiClient(refusing.base_url)
    admin.login(refusing.admin_email, refusing.admin_password)
    body = {"name": "Acme", "owner_email": "owner@acme.example", "owner_password": EXAMPLE_PASSWORD}
    refused = admin.post(f"{API}/accounts", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    [error] = refused.json()["errors"]
    assert error["pointer"] == "/body/owner_password"
    assert "published examples" in error["message"]
    assert EXAMPLE_PASSWORD not in refused.text  # a password is never echoed back
    names = {account["name"] for account in admin.get(f"{API}/accounts").json()["items"]}
    assert "Acme" not in names

    body["owner_password"] = "a-passphrase-of-our-own"
    assert admin.post(f"{API}/accounts", json=body).status_code == 201
