"""The improvement plan's path for the documentation generator (task 5): re-exports the docs
capability's public class. Nothing inside ``app`` imports this module; use
``app.capabilities.docs``."""

from app.capabilities.docs import DocumentationGenerator

__all__ = ["DocumentationGenerator"]
