"""The settings model's JSON schema: every variable, default, bound and description.

It feeds the configuration reference; a change here is a change operators see.
"""

from __future__ import annotations

from pytest_regressions.data_regression import DataRegressionFixture

from app.core.config import DEV_SECRET_KEY, Settings


def test_settings_schema(data_regression: DataRegressionFixture) -> None:
    data_regression.check(Settings.model_json_schema())


def test_settings_schema_shows_no_secret() -> None:
    assert DEV_SECRET_KEY not in repr(Settings.model_json_schema())
