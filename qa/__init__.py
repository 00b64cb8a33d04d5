"""Renum's test and quality-assurance harness: launcher, API client, pytest plugin, factories,
Hypothesis strategies and gates, shared by every suite."""
