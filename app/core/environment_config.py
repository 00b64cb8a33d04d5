"""The improvement plan's path for the environment configuration manager (task 4):
re-exports the configuration capability's public class. Nothing inside ``app`` imports this
module; use ``app.capabilities.configuration``."""

from app.capabilities.configuration import EnvironmentConfigManager

__all__ = ["EnvironmentConfigManager"]
