"""Health of Renum's dependencies: the check registry, the built-in checks and the background
monitor that keeps the latest snapshot for the probes."""
