"""The configuration's entry in the dependency report (``/health/dependencies``, ``renum
doctor``): the running configuration's fingerprint, so that replicas running different
configurations are visible side by side, and a warning while the last live reload stands
refused. Registered with the health capability's registry (``CHECK_MODULES``)."""

from __future__ import annotations

from app.capabilities.configuration.manager import EnvironmentConfigManager
from app.capabilities.health import (
    CheckContext,
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
    register,
)
from app.core.config_view import fingerprint


@register
class ConfigurationCheck(HealthCheck):
    spec = CheckSpec(
        name="configuration",
        kind="configuration",
        critical=False,
        description="The running configuration's fingerprint (a hash of the effective "
        "non-secret settings and of which secrets are set: replicas with different values "
        "run different configurations), and whether the last live reload was refused.",
        measurement="fingerprint",
        timeout_seconds=1.0,
        interval_seconds=5.0,
        ttl_seconds=60.0,
        failure_threshold=1,
        affected_endpoints=["POST /api/v1/ops/config/reload"],
        troubleshooting=Troubleshooting(
            symptom="`configuration:fingerprint` is 'warn': the last reload of the "
            "configuration was refused; the report's output lists why.",
            cause="The `.env` file or the file in RENUM_CONFIG_FILE holds an invalid value, or "
            "a value its environment refuses. The running configuration is kept unchanged.",
            fix="Run `renum config check` to see every problem, correct them, and reload again "
            "(SIGHUP, save the config file, or POST /api/v1/ops/config/reload).",
            docs_anchor="configuration",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        manager = getattr(context.state, "config_manager", None)
        if not isinstance(manager, EnvironmentConfigManager):
            return [
                CheckOutcome(
                    "configuration",
                    Status.passed,
                    "live reload is off: settings change with a restart",
                    fingerprint(context.settings),
                )
            ]
        last = manager.last
        if last is None or last.status != "refused":
            said = "no reload yet" if last is None else f"last reload {last.status}"
            return [
                CheckOutcome(
                    "configuration",
                    Status.passed,
                    f"running configuration {manager.fingerprint} ({said})",
                    manager.fingerprint,
                )
            ]
        return [
            CheckOutcome(
                "configuration",
                Status.warn,
                f"the reload by {last.trigger} at {last.at:%Y-%m-%d %H:%M:%S}Z was refused, the "
                f"running configuration is kept: {'; '.join(last.problems)}",
                manager.fingerprint,
                fix=self.spec.troubleshooting.fix if self.spec.troubleshooting else None,
            )
        ]
