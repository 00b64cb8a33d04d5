"""The improvement plan's path for the performance optimizer (task 6): re-exports the
performance capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.performance``."""

from app.capabilities.performance import PerformanceOptimizer

__all__ = ["PerformanceOptimizer"]
