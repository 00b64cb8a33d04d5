"""The improvement plan's path for the health monitor (task 2): re-exports the monitor
capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.monitor``."""

from app.capabilities.monitor import AdvancedHealthMonitor

__all__ = ["AdvancedHealthMonitor"]
