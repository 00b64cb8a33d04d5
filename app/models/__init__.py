"""SQLAlchemy ORM models. Importing this package registers every table on ``Base.metadata``."""

from app.models.account import Account
from app.models.api_key import ApiKey
from app.models.refresh_token import RefreshToken
from app.models.user import Role, User

__all__ = ["Account", "ApiKey", "RefreshToken", "Role", "User"]
