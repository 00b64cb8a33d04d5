"""Environment profiles: the defaults each environment gives the settings, as data.

``RENUM_ENVIRONMENT`` picks a profile (development, test, staging, production). A profile's
values are the lowest-priority source of the settings: the config file (``RENUM_CONFIG_FILE``),
the ``.env`` file and environment variables all override them, and the model's own defaults
apply only where no profile says anything. Every per-environment default lives here, in one
table, rather than in ``if environment == ...`` branches through the code; the configuration
reference shows each profile's value next to each setting.
"""

from __future__ import annotations

from typing import Any

# Nested like the settings (section -> field). Only what differs from the model's default
# needs an entry, but a profile may repeat a default to say it on purpose.
PROFILES: dict[str, dict[str, Any]] = {
    "development": {
        "log_format": "console",
        "metrics": {"public": True},
        "docs": {"enabled": True},
        "database": {"pool_size": 5},
        # The default first admin is admin@renum.local; the examples run as shown.
        "auth": {"special_use_email_domains": ["local", "test"], "refuse_example_passwords": False},
    },
    "test": {
        "log_format": "json",
        "metrics": {"public": True},
        "docs": {"enabled": True},
        "database": {"pool_size": 5},
        "auth": {"special_use_email_domains": ["local", "test"], "refuse_example_passwords": False},
    },
    "staging": {
        "log_format": "json",
        "metrics": {"public": False},
        "docs": {"enabled": True},
        "database": {"pool_size": 10},
        # Staging rehearses production: a vulnerable dependency (or a missing advisory
        # database) is seen there before the release reaches production.
        "security": {"scanner": {"enabled": True}},
    },
    "production": {
        "log_format": "json",
        "metrics": {"public": False},
        "docs": {"enabled": False},
        # Migrations are a release step (`renum db upgrade`): a start with pending ones stops.
        "database": {"pool_size": 20, "auto_migrate": False},
        # The offline vulnerability scanner (its OSV database is the operator's to refresh),
        # and HTTPS only for a year: production is served over TLS (behind its proxy).
        "security": {
            "scanner": {"enabled": True},
            "headers": {"hsts_max_age_seconds": 31_536_000},
        },
    },
}


def profile_defaults(environment: str) -> dict[str, Any]:
    """The profile of ``environment`` (an unknown name has none: the settings' own validation
    reports it)."""
    return PROFILES.get(environment, {})


def profile_value(environment: str, dotted: str) -> Any:
    """One setting's value in a profile (``database.pool_size``), or ``None`` when the profile
    leaves it to the model's default."""
    node: Any = profile_defaults(environment)
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
