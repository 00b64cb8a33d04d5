"""Properties of the JWT codec, in-process."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.core.config import Settings
from app.core.security import TokenCodec, TokenError

CODEC = TokenCodec(Settings(secret_key="property-test-secret-0123456789abcdefgh"))
OTHER_KEY = TokenCodec(Settings(secret_key="another-property-secret-0123456789abcd"))
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

token_types = st.sampled_from(["access", "refresh"])
# Issue times within a lifetime of now, so that every token is still valid.
recent = st.integers(min_value=0, max_value=10 * 60).map(
    lambda seconds: datetime.now(UTC) - timedelta(seconds=seconds)
)


@given(subject=st.uuids(), token_type=token_types, token_id=st.uuids(), now=recent)
def test_issue_then_decode_round_trips(
    subject: uuid.UUID, token_type: str, token_id: uuid.UUID, now: datetime
) -> None:
    token, issued = CODEC.issue(subject, token_type, token_id=token_id, now=now)  # type: ignore[arg-type]
    decoded = CODEC.decode(token, token_type)  # type: ignore[arg-type]
    assert decoded == issued
    assert decoded.subject == subject
    assert decoded.token_id == token_id
    assert decoded.token_type == token_type


@given(subject=st.uuids(), token_type=token_types)
def test_a_token_is_only_good_for_its_own_type_and_key(subject: uuid.UUID, token_type: str) -> None:
    token, _ = CODEC.issue(subject, token_type)  # type: ignore[arg-type]
    other_type = "refresh" if token_type == "access" else "access"
    with pytest.raises(TokenError):
        CODEC.decode(token, other_type)  # type: ignore[arg-type]
    with pytest.raises(TokenError):
        OTHER_KEY.decode(token, token_type)  # type: ignore[arg-type]


def _decoded(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


@given(
    subject=st.uuids(),
    token_type=token_types,
    segment=st.sampled_from([1, 2]),  # the payload or the signature
    position=st.integers(min_value=0),
    replacement=st.sampled_from(BASE64URL + "=.+/!~ "),
)
def test_any_single_character_change_is_refused(
    subject: uuid.UUID, token_type: str, segment: int, position: int, replacement: str
) -> None:
    token, claims = CODEC.issue(subject, token_type)  # type: ignore[arg-type]
    parts = token.split(".")
    original = parts[segment]
    index = position % len(original)
    assume(original[index] != replacement)
    changed = original[:index] + replacement + original[index + 1 :]
    parts[segment] = changed
    forged = ".".join(parts)
    if _decoded(changed) == _decoded(original):
        # The last character of a base64 segment carries a few padding bits; changing only
        # those bits yields the very same bytes. Such a token is refused (PyJWT checks the
        # padding bits) or decodes to exactly the same claims, never to anything else.
        try:
            decoded = CODEC.decode(forged, token_type)  # type: ignore[arg-type]
        except TokenError:
            return
        assert decoded == claims
        return
    with pytest.raises(TokenError):
        CODEC.decode(forged, token_type)  # type: ignore[arg-type]


@given(subject=st.uuids(), token_type=token_types, cut=st.integers(min_value=1, max_value=400))
def test_truncated_tokens_are_refused(subject: uuid.UUID, token_type: str, cut: int) -> None:
    token, _ = CODEC.issue(subject, token_type)  # type: ignore[arg-type]
    truncated = token[: max(0, len(token) - cut)]
    with pytest.raises(TokenError):
        CODEC.decode(truncated, token_type)  # type: ignore[arg-type]


@given(text=st.text(max_size=200))
def test_arbitrary_text_is_refused_with_token_error_only(text: str) -> None:
    with pytest.raises(TokenError):
        CODEC.decode(text, "access")
