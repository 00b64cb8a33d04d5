"""Password work as request handlers must do it: argon2 in its threads (never on the event
loop) and with no database transaction open, so a transaction never holds a lock (SQLite's
write lock, a PostgreSQL row lock) through ~100 ms of hashing. Read what you need, end the
transaction, hash or verify, then write in a new short transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import hash_password_async, verify_password_async


async def end_read_transaction(session: AsyncSession) -> None:
    """End the session's transaction, which should only have read (authentication's lookup, a
    user read before a check). It is committed, not rolled back, so that what it loaded stays
    usable (sessions do not expire on commit); unflushed changes are refused as a bug."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("unflushed changes would be committed early; hash before changing")
    if session.in_transaction():
        await session.commit()


async def hash_outside_transaction(session: AsyncSession, password: str) -> str:
    await end_read_transaction(session)
    return await hash_password_async(password)


async def verify_outside_transaction(
    session: AsyncSession, password: str, password_hash: str | None
) -> bool:
    await end_read_transaction(session)
    return await verify_password_async(password, password_hash)
