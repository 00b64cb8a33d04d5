"""JWT negative cases over HTTP: every bad credential on GET /users/me is a 401 problem document
with a ``WWW-Authenticate: Bearer`` challenge.

Tokens signed with the server's own secret prove the server checks the claims and not only the
signature; a correctly forged token is accepted first, so the negatives are not 401 by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from integration_support import (
    Forge,
    assert_unauthorized,
    b64url,
    b64url_json,
    bearer,
    jwt_payload,
)

from qa.client import API, ApiClient
from qa.factories import Tenant, expect

ME = f"{API}/users/me"
OTHER_KEY = "another-deployment-secret-" + "x" * 40


def test_a_correctly_forged_token_is_accepted(
    client: ApiClient, tenant: Tenant, forge: Forge
) -> None:
    """The control for the table below: the forging itself is right."""
    response = client.get(ME, headers=bearer(forge(tenant.member.id)))
    assert expect(response, 200)["id"] == tenant.member.id


def _expired(forge: Forge, sub: str) -> str:
    now = int(time.time())
    return forge(sub, iat=now - 3600, exp=now - 60)


def _issued_in_the_future(forge: Forge, sub: str) -> str:
    now = int(time.time())
    return forge(sub, iat=now + 3600, exp=now + 7200)


FORGED: dict[str, Callable[[Forge, str], str]] = {
    "expired": _expired,
    "issued in the future": _issued_in_the_future,
    "wrong audience": lambda forge, sub: forge(sub, aud="someone-else"),
    "wrong issuer": lambda forge, sub: forge(sub, iss="not-renum"),
    "typ refresh": lambda forge, sub: forge(sub, typ="refresh"),
    "typ unknown": lambda forge, sub: forge(sub, typ="id"),
    "no typ": lambda forge, sub: forge(sub, typ=...),
    "no exp": lambda forge, sub: forge(sub, exp=...),
    "no iat": lambda forge, sub: forge(sub, iat=...),
    "no sub": lambda forge, sub: forge(sub, sub=...),
    "no aud": lambda forge, sub: forge(sub, aud=...),
    "no iss": lambda forge, sub: forge(sub, iss=...),
    "no jti": lambda forge, sub: forge(sub, jti=...),
    "sub not a uuid": lambda forge, sub: forge("admin"),
    "sub of nobody": lambda forge, sub: forge(str(uuid.uuid4())),
    "exp not a number": lambda forge, sub: forge(sub, exp="tomorrow"),
    "gen not a number": lambda forge, sub: forge(sub, gen="0"),
    "gen negative": lambda forge, sub: forge(sub, gen=-1),
    "gen of another generation": lambda forge, sub: forge(sub, gen=1),
    "HS512 with the right key": lambda forge, sub: forge(sub, algorithm="HS512"),
    "signed with another key": lambda forge, sub: forge(sub, key=OTHER_KEY),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_tokens_are_refused(
    client: ApiClient, tenant: Tenant, forge: Forge, case: str
) -> None:
    token = FORGED[case](forge, tenant.member.id)
    assert_unauthorized(client.get(ME, headers=bearer(token)))


def _alg_none(token: str) -> str:
    return ".".join(
        [b64url_json({"alg": "none", "typ": "JWT"}), b64url_json(jwt_payload(token)), ""]
    )


def _alg_none_keeping_signature(token: str) -> str:
    _, payload, signature = token.split(".")
    return ".".join([b64url_json({"alg": "none", "typ": "JWT"}), payload, signature])


def _payload_swapped_to_the_owner(token: str, tenant: Tenant) -> str:
    header, _, signature = token.split(".")
    payload = {**jwt_payload(token), "sub": tenant.owner.id}
    return ".".join([header, b64url_json(payload), signature])


def _extended_expiry(token: str) -> str:
    header, _, signature = token.split(".")
    payload = {**jwt_payload(token), "exp": jwt_payload(token)["exp"] + 86400}
    return ".".join([header, b64url_json(payload), signature])


def _signature_flipped(token: str) -> str:
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return ".".join([header, payload, signature[:middle] + flipped + signature[middle + 1 :]])


def _signature_dropped(token: str) -> str:
    header, payload, _ = token.split(".")
    return f"{header}.{payload}."


def _hs256_key_confusion(token: str) -> str:
    """Signed with an empty key, as some libraries accept."""
    header, payload, _ = token.split(".")
    signature = hmac.new(b"", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


TAMPERED: dict[str, Callable[[str, Tenant], str]] = {
    "alg none": lambda token, _: _alg_none(token),
    "alg none keeping the signature": lambda token, _: _alg_none_keeping_signature(token),
    "payload changed to another user": _payload_swapped_to_the_owner,
    "payload expiry extended": lambda token, _: _extended_expiry(token),
    "signature changed": lambda token, _: _signature_flipped(token),
    "signature removed": lambda token, _: _signature_dropped(token),
    "signed with an empty key": lambda token, _: _hs256_key_confusion(token),
    "trailing garbage": lambda token, _: token + "x",
    "two segments": lambda token, _: token.rsplit(".", 1)[0],
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_tokens_are_refused(
    client: ApiClient, tenant: Tenant, member_client: ApiClient, case: str
) -> None:
    token = str(member_client.tokens["access_token"])
    assert_unauthorized(client.get(ME, headers=bearer(TAMPERED[case](token, tenant))))
    # The untouched token still works: the 401 came from the tampering.
    expect(client.get(ME, headers=bearer(token)), 200)


def test_refresh_token_is_not_an_access_token(client: ApiClient, tenant: Tenant) -> None:
    tokens = expect(
        client.post(
            f"{API}/auth/token",
            data={"username": tenant.member.email, "password": tenant.member.password},
        ),
        200,
    )
    assert_unauthorized(client.get(ME, headers=bearer(tokens["refresh_token"])))


AUTHORIZATION: dict[str, Callable[[str], dict[str, Any]]] = {
    "no header": lambda token: {},
    "empty header": lambda token: {"Authorization": ""},
    "Bearer without a token": lambda token: {"Authorization": "Bearer"},
    "Bearer and spaces": lambda token: {"Authorization": "Bearer   x"},
    "garbage string": lambda token: bearer("this-is-not-a-jwt"),
    "three garbage segments": lambda token: bearer("a.b.c"),
    "Basic scheme": lambda token: {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
    "Token scheme with a valid token": lambda token: {"Authorization": f"Token {token}"},
    "valid token without a scheme": lambda token: {"Authorization": token},
    "token in a cookie": lambda token: {"Cookie": f"access_token={token}"},
    "token in the query": lambda token: {},
}


@pytest.mark.parametrize("case", AUTHORIZATION)
def test_missing_or_malformed_authorization_is_refused(
    client: ApiClient, member_client: ApiClient, case: str
) -> None:
    token = str(member_client.tokens["access_token"])
    params = {"access_token": token} if case == "token in the query" else None
    body = assert_unauthorized(client.get(ME, headers=AUTHORIZATION[case](token), params=params))
    assert token not in body["detail"]


def test_a_401_never_echoes_the_credential(client: ApiClient, member_client: ApiClient) -> None:
    token = str(member_client.tokens["access_token"])
    response = client.get(ME, headers=bearer(token + "tampered"))
    assert_unauthorized(response)
    assert token not in response.text


def test_jwt_library_agrees_a_server_token_is_valid(
    member_client: ApiClient, secret_key: str
) -> None:
    """The server's tokens carry exactly the documented claims."""
    claims = jwt.decode(
        str(member_client.tokens["access_token"]),
        secret_key,
        algorithms=["HS256"],
        audience="renum-api",
        issuer="renum",
    )
    assert {"sub", "jti", "typ", "aud", "iss", "iat", "exp", "gen"} <= claims.keys()
    assert claims["typ"] == "access"
    assert claims["gen"] == 0  # the member's password never changed
    assert claims["exp"] > claims["iat"]
