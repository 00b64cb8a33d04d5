"""The OpenAPI document is a product: any change to it shows up as a snapshot diff.

Accept an intended change with ``nox -s regression -- --force-regen`` and commit the new
snapshot together with the code that changed it.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_regressions.data_regression import DataRegressionFixture

from app import __version__
from app.core.config import Settings
from app.main import create_app

pytestmark = pytest.mark.usefixtures("clean_environment")


def openapi_document() -> dict[str, Any]:
    settings = Settings(environment="test", database={"url": "sqlite+aiosqlite:///:memory:"})
    document = create_app(settings).openapi()
    assert document["info"]["version"] == __version__
    document["info"]["version"] = "<version>"  # a release bump is not an API change
    return document


def test_openapi_schema(data_regression: DataRegressionFixture) -> None:
    data_regression.check(openapi_document())


def test_openapi_schema_is_stable_across_builds() -> None:
    assert openapi_document() == openapi_document()


def test_every_operation_is_documented() -> None:
    """What the snapshot alone would not insist on: ids, summaries, documented errors."""
    document = openapi_document()
    seen: set[str] = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("operationId"), where
            assert operation["operationId"] not in seen, where
            seen.add(operation["operationId"])
            assert operation.get("summary"), where
            assert any(code.startswith("2") for code in operation["responses"]), where
            if path.startswith("/api/v1/") and not path.startswith("/api/v1/auth/"):
                assert "401" in operation["responses"], f"{where} does not document 401"
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and code != "503":
                    assert "application/problem+json" in response.get("content", {}), (
                        f"{where} {code} is not documented as problem+json"
                    )
