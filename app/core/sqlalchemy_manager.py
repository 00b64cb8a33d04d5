"""The improvement plan's path for the database manager (task 3): re-exports the database
layer's ``SQLAlchemyManager`` (engines, pools, drivers, sessions). Nothing inside ``app`` imports
this module; use ``app.db.database``."""

from app.db.database import SQLAlchemyManager

__all__ = ["SQLAlchemyManager"]
