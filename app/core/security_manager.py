"""The improvement plan's path for the security manager (task 7): re-exports the security
capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.security``."""

from app.capabilities.security import SecurityManager

__all__ = ["SecurityManager"]
