"""The improvement plan's path for the dependency validator (task 1): re-exports the health
capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.health``."""

from app.capabilities.health import DependencyValidator

__all__ = ["DependencyValidator"]
