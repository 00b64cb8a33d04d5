"""Opaque cursors of keyset pagination: a list's ``next_cursor`` names the position of its
page's last row, ``(created_at, id)``; sent back as ``?cursor=``, the next page starts right
after it, however deep it is, instead of reading and dropping every row an offset skips.

A cursor is the base64url text (no padding) of a version byte, the instant in microseconds
since the Unix epoch (8 bytes, signed), the id (16 bytes) and a tag: the first 16 bytes of an
HMAC-SHA256, under the server's secret key, of all of that together with the cursor's context
(the list and whose rows it shows: one account, or every account). Only the server makes
cursors, so one that does not decode, carries another tag (edited, made for another list or
another account, or before the secret key changed) or holds no valid instant is refused
(``InvalidCursor``) before any query runs. A cursor carries a sort position only: a list
applies the caller's account filter to every page, whatever cursor it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import uuid
from datetime import UTC, datetime, timedelta

from app.repositories.base import Position

VERSION = 1
_FIELDS = struct.Struct(">Bq16s")  # version, microseconds since the epoch, id
_TAG_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PURPOSE = b"renum pagination cursor\x00"
# The length of every cursor of this version, and a bound the API schema states for them all.
LENGTH = len(base64.urlsafe_b64encode(bytes(_FIELDS.size + _TAG_BYTES)).rstrip(b"="))
MAX_LENGTH = 128
ALPHABET = r"^[A-Za-z0-9_-]+$"
# The `type` of the 422 error a refused cursor gets, and the rule as the API schema states it.
ERROR_TYPE = "invalid_cursor"
RULE = (
    "A cursor must be a `next_cursor` this list gave the same account (or platform admin), "
    "unchanged, while the server's secret key is the same; it is sent without `offset`."
)


class InvalidCursor(ValueError):
    """Not a cursor this server made for this list and this caller."""


def _tag(payload: bytes, secret: bytes, context: str) -> bytes:
    message = _PURPOSE + context.encode() + b"\x00" + payload
    return hmac.new(secret, message, hashlib.sha256).digest()[:_TAG_BYTES]


def encode(position: Position, secret: bytes, context: str) -> str:
    """The cursor of ``position`` (a UTC instant and an id) in the list named by ``context``."""
    moment, row_id = position
    microseconds = (moment - _EPOCH) // _MICROSECOND
    payload = _FIELDS.pack(VERSION, microseconds, row_id.bytes)
    raw = payload + _tag(payload, secret, context)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(cursor: str, secret: bytes, context: str) -> Position:
    """The position ``cursor`` names; ``InvalidCursor`` unless this server made it with
    ``secret`` for ``context``."""
    if len(cursor) != LENGTH:
        raise InvalidCursor("unexpected length")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCursor("not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != cursor:
        raise InvalidCursor("not the canonical spelling")  # unused low bits set: one per cursor
    payload, tag = raw[: _FIELDS.size], raw[_FIELDS.size :]
    if not hmac.compare_digest(tag, _tag(payload, secret, context)):
        raise InvalidCursor("tag mismatch")
    version, microseconds, row_id = _FIELDS.unpack(payload)
    if version != VERSION:  # pragma: no cover - the only version so far
        raise InvalidCursor("unknown version")
    try:
        moment = _EPOCH + microseconds * _MICROSECOND
    except OverflowError:  # pragma: no cover - a tag this server made holds a real instant
        raise InvalidCursor("instant out of range") from None
    return moment, uuid.UUID(bytes=row_id)
