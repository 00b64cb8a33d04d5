"""Properties of log redaction: no API key or JWT survives ``scrub``, whatever surrounds it;
and of the access line's quoting."""

from __future__ import annotations

import json
import uuid

from hypothesis import example, given
from hypothesis import strategies as st

from app.core.config import Settings
from app.core.logging import (
    _SECRET_JWT,
    _SECRET_VALUE,
    REDACTED,
    _json_string,
    _redacted,
    scrub,
)
from app.core.security import TokenCodec, new_api_key

CODEC = TokenCodec(Settings(secret_key="scrub-property-secret-0123456789abcdefg"))

# Text around a secret: anything, plus the fragments the redaction patterns care about
# (key and JWT prefixes, the characters keys are made of, separators, "Bearer").
fragments = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["rk_", "eyJ", ".", " ", "_", "-", "=", '"', ":", "Bearer ", "token=", "a" * 16, "\n"]
    ),
)
surroundings = st.lists(fragments, max_size=6).map("".join)
api_keys = st.builds(lambda _: new_api_key(), st.integers())
jwts = st.builds(
    lambda subject, kind: CODEC.issue(subject, kind)[0],
    st.uuids(),
    st.sampled_from(["access", "refresh"]),
)


def assert_key_gone(output: str, key: str) -> None:
    assert key not in output
    assert key[3:] not in output  # the random part carries the secret


def assert_jwt_gone(output: str, token: str) -> None:
    _header, payload, signature = token.split(".")
    assert token not in output
    # An HS256 header is the same for every token, so payload + signature is the whole token.
    assert f"{payload}.{signature}" not in output
    assert signature not in output


@given(before=surroundings, after=surroundings, key=api_keys)
def test_no_api_key_survives(before: str, after: str, key: str) -> None:
    output = scrub(before + key + after)
    assert_key_gone(output, key)


@given(before=surroundings, after=surroundings, token=jwts)
@example(before="rk_", after="", token=CODEC.issue(uuid.UUID(int=1), "access")[0])
def test_no_jwt_survives(before: str, after: str, token: str) -> None:
    output = scrub(before + token + after)
    assert_jwt_gone(output, token)


@given(parts=st.lists(st.one_of(surroundings, api_keys, jwts), max_size=6))
def test_secrets_in_nested_events_are_removed(parts: list[str]) -> None:
    keys = [p for p in parts if p.startswith("rk_") and len(p) == 46]
    tokens = [p for p in parts if p.count(".") == 2 and p.startswith("eyJ")]
    event = {"message": " ".join(parts), "items": [tuple(parts), {"note": parts}]}
    output = repr(scrub(event))
    for key in keys:
        assert_key_gone(output, key)
    for token in tokens:
        assert_jwt_gone(output, token)


@given(text=st.text(alphabet=st.characters(exclude_characters="\\"), max_size=60))
def test_scrub_is_idempotent(text: str) -> None:
    once = scrub(text)
    assert scrub(once) == once


def _scrub_without_the_quick_test(text: str) -> str:
    return _SECRET_VALUE.sub(_redacted, _SECRET_JWT.sub(REDACTED, text))


bearers = st.sampled_from(["bearer ", "BEARER\t", "BeArEr  ", "bEARER "])


@given(parts=st.lists(st.one_of(surroundings, bearers, api_keys, jwts, st.text()), max_size=6))
def test_the_quick_test_never_lets_through_what_the_patterns_redact(parts: list[str]) -> None:
    """``scrub`` skips the patterns for text without their starts; it answers as they do."""
    text = "".join(parts)
    assert scrub(text) == _scrub_without_the_quick_test(text)


@given(text=st.text())
def test_an_access_line_quotes_any_text_as_json_does(text: str) -> None:
    rendered = _json_string(text)
    assert json.loads(rendered) == text
    assert rendered == json.dumps(text)
