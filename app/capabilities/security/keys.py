"""Rotation of the keys that seal stored secrets (``renum keys status``, ``renum keys rotate``).

Every secret Renum stores is sealed with AES-GCM under one of ``RENUM_ENCRYPTION_KEYS``
(``app.core.crypto``), bound to its row by associated data: users' provider keys, webhooks'
signing secrets, the secrets of deliveries waiting to be sent, and the content of the
executions of the accounts that seal it at rest (``content_keys``, ``app.services.content``:
rows of five tables, each sealed as a whole). New values are sealed with
the first key (the primary); older ones open with the key that sealed them. Rotating is:

1. put the new key first in ``RENUM_ENCRYPTION_KEYS``, the old ones after it, and restart the
   processes (each opens both from then on, and seals with the new one);
2. ``renum keys rotate``: every value sealed with another key is opened and sealed again with
   the primary, in batches, each committed by itself, while the service runs. A row changed
   meanwhile (a key replaced by its user) is left as the change made it; an interrupted
   rotation is run again and goes on where it stopped (it looks for what is not under the
   primary yet);
3. ``renum keys status``: once no value uses an old key, remove it from the setting.

A value that does not open (sealed with a key no longer configured, or damaged) is never
changed: it is counted and named, so the key can be put back before it is lost for good."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.capabilities.security.content_keys import content_key_counts, reseal
from app.core.crypto import VERSION, CryptoError, SecretBox
from app.models import Delivery, ProviderKey, Webhook
from app.services.content import SealingPolicy
from app.services.delivery import delivery_secret_aad, webhook_secret_aad
from app.services.provider_keys import provider_key_aad

DEFAULT_BATCH = 200


@dataclass(frozen=True)
class SealedColumn:
    """A column of sealed values: its table's model, the column, the column naming the key
    that sealed each value (None when only the value itself says), and the associated data
    that binds a value to its row."""

    name: str
    model: Any
    column: str
    key_id_column: str | None
    associated_data: Callable[[Row[Any]], str]

    @property
    def sealed(self) -> Any:
        return getattr(self.model, self.column)


SEALED_COLUMNS = (
    SealedColumn(
        "provider keys",
        ProviderKey,
        "sealed_key",
        "encryption_key_id",
        lambda row: provider_key_aad(row.account_id, row.id),
    ),
    SealedColumn(
        "webhook secrets",
        Webhook,
        "sealed_secret",
        "encryption_key_id",
        lambda row: webhook_secret_aad(row.account_id, row.id),
    ),
    SealedColumn(
        "delivery secrets",
        Delivery,
        "sealed_secret",
        None,
        lambda row: delivery_secret_aad(row.id),
    ),
)


@dataclass
class KeyUse:
    """How many values of each column each key id seals."""

    primary: str
    configured: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> key id -> n

    def by_key(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for per_key in self.counts.values():
            for key_id, count in per_key.items():
                totals[key_id] = totals.get(key_id, 0) + count
        return totals

    @property
    def pending(self) -> int:
        """Values under a configured key other than the primary: what a rotation moves."""
        return sum(
            n for k, n in self.by_key().items() if k != self.primary and k in self.configured
        )

    @property
    def unknown(self) -> dict[str, int]:
        """Values under a key that is not configured: they cannot be opened."""
        return {k: n for k, n in self.by_key().items() if k not in self.configured}

    def retirable(self) -> list[str]:
        """Configured keys, other than the primary, that no value uses."""
        used = self.by_key()
        return [k for k in self.configured if k != self.primary and not used.get(k)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "configured": list(self.configured),
            "values": self.counts,
            "pending": self.pending,
            "unknown": self.unknown,
            "retirable": self.retirable(),
        }


async def key_use(engine: AsyncEngine, box: SecretBox) -> KeyUse:
    """Count the sealed values of every column by the key that sealed them."""
    async with engine.connect() as conn:
        return await key_use_on(conn, box)


async def key_use_on(conn: AsyncConnection, box: SecretBox) -> KeyUse:
    """``key_use`` on an open connection (the dependency report's probe connection, which
    never creates a database)."""
    use = KeyUse(box.current_key_id, tuple(box.key_ids))
    for column in SEALED_COLUMNS:
        counts: dict[str, int] = {}
        if column.key_id_column is not None:
            key_id = getattr(column.model, column.key_id_column)
            rows = await conn.execute(select(key_id, func.count()).group_by(key_id))
            counts = {str(k): int(n) for k, n in rows.all()}
        else:
            rows = await conn.execute(select(column.sealed).where(column.sealed.is_not(None)))
            for (token,) in rows.all():
                key = SecretBox.key_id_of(token)
                counts[key] = counts.get(key, 0) + 1
        use.counts[column.name] = counts
    use.counts.update(await content_key_counts(conn))
    return use


@dataclass
class Rotation:
    """What a rotation did: values sealed again with the primary, rows left because they
    changed meanwhile, and values that did not open (by column, with their row ids)."""

    resealed: dict[str, int] = field(default_factory=dict)
    changed_meanwhile: int = 0
    unopened: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.resealed.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "resealed": self.resealed,
            "changed_meanwhile": self.changed_meanwhile,
            "unopened": self.unopened,
        }


async def rotate(
    engine: AsyncEngine,
    box: SecretBox,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] = lambda column, done: None,
) -> Rotation:
    """Seal again with the primary key every value sealed with another one (see the module).
    ``progress(column, resealed so far)`` is told after each committed batch."""
    result = Rotation()
    primary = box.current_key_id
    for column in SEALED_COLUMNS:
        done = 0
        after: uuid.UUID | None = None
        while True:
            rows = await _batch(engine, column, primary, after, batch)
            if not rows:
                break
            after = rows[-1].id
            async with engine.begin() as conn:
                for row in rows:
                    old = getattr(row, column.column)
                    try:
                        plain = box.open(old, column.associated_data(row))
                    except CryptoError:
                        result.unopened.setdefault(column.name, []).append(str(row.id))
                        continue
                    values = {column.column: box.seal(plain, column.associated_data(row))}
                    if column.key_id_column is not None:
                        values[column.key_id_column] = primary
                    changed = await conn.execute(
                        update(column.model)
                        .where(column.model.id == row.id, column.sealed == old)
                        .values(**values)
                    )
                    if changed.rowcount == 1:
                        done += 1
                    else:
                        result.changed_meanwhile += 1
            progress(column.name, done)
        result.resealed[column.name] = done
    content = await reseal(engine, box, batch=batch, progress=progress)
    result.resealed.update(content.done)
    result.changed_meanwhile += content.changed_meanwhile
    result.unopened.update(content.unopened)
    return result


async def seal_content(
    engine: AsyncEngine,
    box: SecretBox,
    policy: SealingPolicy,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] = lambda column, done: None,
) -> Rotation:
    """Seal with the primary key the content stored in plaintext of the ended executions of
    the accounts ``policy`` lists (``content_keys``), online and resumably like a rotation."""
    content = await reseal(engine, box, policy=policy, batch=batch, progress=progress)
    return Rotation(content.done, content.changed_meanwhile, content.unopened)


async def _batch(
    engine: AsyncEngine, column: SealedColumn, primary: str, after: uuid.UUID | None, size: int
) -> list[Row[Any]]:
    """The next rows (by id) whose value is not sealed with ``primary``."""
    model = column.model
    wanted = [model.id, column.sealed]
    wanted += [c for c in (getattr(model, "account_id", None),) if c is not None]
    if column.key_id_column is not None:  # indexed
        not_primary = getattr(model, column.key_id_column) != primary
    else:
        not_primary = ~column.sealed.startswith(f"{VERSION}:{primary}:", autoescape=True)
    query = select(*wanted).where(column.sealed.is_not(None), not_primary)
    if after is not None:
        query = query.where(model.id > after)
    async with engine.connect() as conn:
        return list((await conn.execute(query.order_by(model.id).limit(size))).all())
