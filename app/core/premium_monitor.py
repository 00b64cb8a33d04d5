"""The improvement plan's path for the premium monitor (tasks 8 and 11): re-exports the
analytics capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.analytics``."""

from app.capabilities.analytics import PremiumMonitor

__all__ = ["PremiumMonitor"]
