"""Business logic. Routers call services; services call repositories."""
