"""Who reads `/metrics` (environment, version and Python build, which help pick exploits):
anyone outside production by default; where it is not public (`RENUM_METRICS__PUBLIC=false`,
or production by default) only platform admins and the health probe token, as
`/health/dependencies` takes it. Anonymous callers get 401, other users 403, as problems."""

from __future__ import annotations

import pytest

from qa.client import ApiClient
from qa.factories import create_tenant
from qa.launcher import Backend
from qa.plugin import LaunchBackend

PROBE_TOKEN = "metrics-probe-token-0123456789abcdef"
NOT_PUBLIC = {
    "explicitly": {"RENUM_METRICS__PUBLIC": "false"},
    # Production applies no migration at start-up unless told to (a fresh database here).
    "in production by default": {
        "RENUM_ENVIRONMENT": "production",
        "RENUM_DATABASE__AUTO_MIGRATE": "true",
    },
}


def _assert_problem(response: object, status: int) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    content_type = response.headers["content-type"]  # type: ignore[attr-defined]
    assert content_type.startswith("application/problem+json")
    body = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert "renum_build_info" not in response.text  # type: ignore[attr-defined]


def _is_metrics(response: object) -> bool:
    return response.status_code == 200 and "renum_build_info" in response.text  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", NOT_PUBLIC)
def test_only_admins_and_the_probe_token_read_metrics_that_are_not_public(
    launch_backend: LaunchBackend, case: str
) -> None:
    backend = launch_backend(
        "sqlite", extra_env={**NOT_PUBLIC[case], "RENUM_HEALTH__PROBE_TOKEN": PROBE_TOKEN}
    )
    with ApiClient(backend.base_url) as anonymous:
        response = anonymous.get("/metrics")
        _assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        _assert_problem(anonymous.get("/metrics", headers={"X-Probe-Token": "wrong" * 4}), 401)
        _assert_problem(
            anonymous.get("/metrics", headers={"Authorization": "Bearer not-a-token"}), 401
        )
        assert _is_metrics(anonymous.get("/metrics", headers={"X-Probe-Token": PROBE_TOKEN}))
        bearer_probe = {"Authorization": f"Bearer {PROBE_TOKEN}"}
        assert _is_metrics(anonymous.get("/metrics", headers=bearer_probe))
        # The probes themselves stay anonymous.
        assert anonymous.get("/health/live").status_code == 200

    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        assert _is_metrics(admin.get("/metrics"))
        tenant = create_tenant(admin)
    finally:
        admin.close()
    owner = ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)
    try:
        _assert_problem(owner.get("/metrics"), 403)
    finally:
        owner.close()


def test_metrics_are_public_outside_production_by_default(
    backend: Backend, client: ApiClient
) -> None:
    """The suite's backend runs in the `test` environment with no metrics setting."""
    assert _is_metrics(client.get("/metrics"))


def test_the_schema_documents_the_refusals(client: ApiClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert {"200", "401", "403"} <= operation["responses"].keys()
    assert "probe token" in operation["description"]
