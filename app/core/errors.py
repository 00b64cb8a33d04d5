"""Errors as ``application/problem+json`` (RFC 9457), everywhere.

Services raise ``ProblemError`` subclasses; the handlers installed by ``install_error_handlers``
turn those, FastAPI's validation errors and Starlette's HTTP errors into one problem document
shape carrying the request id; ``app.core.middleware`` answers unexpected exceptions the same
way. No stack trace or SQL reaches a client. Every 429 says when to retry (``Retry-After``,
added by ``problem_response`` whichever path refused the request).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.input_limits import parse_error_problem
from app.core.request_context import current_request_id
from app.core.schema_additions import add_to_schema

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://renum.dev/problems/"


class ProblemError(Exception):
    """An error the client can act on, rendered as a problem document."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class BadRequest(ProblemError):
    pass


class Unauthorized(ProblemError):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str = "Missing or invalid credentials.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class CredentialEnded(Unauthorized):
    """A credential this server issued that is no longer valid (expired, revoked, or ended by
    a password change): a client to log in again, not a guess (the throttling does not count
    it)."""


class Forbidden(ProblemError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(ProblemError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


# Seconds a 429 asks the client to wait when the limit does not know better.
DEFAULT_RETRY_AFTER_SECONDS = 5


class TooManyRequests(ProblemError):
    """A limit was reached; ``Retry-After`` says when to try again (every 429 carries it)."""

    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(ProblemError):
    """A dependency is away; ``Retry-After`` says when to try again (every 503 carries it)."""

    status, slug, title = 503, "service-unavailable", "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached: the request was refused before it changed anything, or
    its transaction was rolled back."""

    slug, title = "database-unavailable", "Database unavailable"


class ValidationFailed(ProblemError):
    status, slug, title = 422, "validation-error", "Invalid request"

    @classmethod
    def at(cls, pointer: str, message: str, error_type: str = "invalid") -> ValidationFailed:
        """One bad field, e.g. ``ValidationFailed.at("/body/workflow/steps/0/agent_id", ...)``."""
        location = pointer.strip("/").split("/", 1)[0] or "body"
        error = {"pointer": pointer, "location": location, "type": error_type, "message": message}
        return cls(message, errors=[error])


_PROBLEM_CLASSES: tuple[type[ProblemError], ...] = (
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    ValidationFailed,
    TooManyRequests,
    ServiceUnavailable,
)


def problem_body(
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": current_request_id(),
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if status == 429 and not any(name.lower() == "retry-after" for name in headers or ()):
        # Every 429 says when to retry, whichever code path refused the request.
        headers = {**(headers or {}), "Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)}
    return JSONResponse(
        problem_body(status, slug, title, detail, instance, errors),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """One entry per bad field: where (JSON pointer into the request), what, and why."""
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        errors.append(
            {
                "pointer": "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in loc),
                "location": loc[0] if loc else "request",
                "type": error.get("type", "invalid"),
                "message": error.get("msg", "invalid value"),
            }
        )
    return errors


async def _handle_problem(request: Request, exc: ProblemError) -> JSONResponse:
    # Capabilities told of the problems answered (the throttling counts 401s and 404s).
    for observer in getattr(request.app.state, "problem_observers", ()):
        await observer(request.scope, exc)
    return problem_response(
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        instance=request.url.path,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _field_errors(exc)
    invalid = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if invalid:
        # The location's second part is a character offset, not a field: say it in words.
        offset = invalid[0].get("loc", ("body", 0))[-1]
        message = f"{invalid[0].get('msg', 'JSON decode error')} at character {offset}"
        return problem_response(
            400,
            "malformed-json",
            "Malformed JSON",
            "The request body is not valid JSON.",
            instance=request.url.path,
            errors=[
                {"pointer": "/body", "location": "body", "type": "json_invalid", "message": message}
            ],
        )
    count = len(errors)
    detail = f"{count} field{'s' if count != 1 else ''} failed validation."
    if any(e["location"] == "body" for e in errors):
        detail += _body_media_type_hint(request)
    return problem_response(
        422,
        ValidationFailed.slug,
        ValidationFailed.title,
        detail,
        instance=request.url.path,
        errors=errors,
    )


def _body_media_type_hint(request: Request) -> str:
    """When the body was sent as another media type than the operation reads (JSON to the
    token endpoint's OAuth2 form, a JSON body without ``Content-Type``): say so, since the
    field errors alone read as if the fields were missing."""
    field = getattr(request.scope.get("route"), "body_field", None)
    if field is None:
        return ""
    if isinstance(field.field_info, params.File):
        expected = "multipart/form-data"
    elif isinstance(field.field_info, params.Form):
        expected = "application/x-www-form-urlencoded"
    else:
        expected = "application/json"
    sent = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if sent == expected or (expected == "application/json" and sent.endswith("+json")):
        return ""
    if not sent:
        return f" The body was sent without a Content-Type header: send `{expected}`."
    return f" This operation reads a `{expected}` body; the request sent `{sent}`."


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (Starlette's 405 names only the
    methods of the first route that matched the path). Runs on 405s only."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _problem_class(status: int) -> type[ProblemError] | None:
    return next((c for c in _PROBLEM_CLASSES if c.status == status), None)


async def _handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.__cause__, ProblemError):
        # FastAPI wraps errors raised while it reads the body (a body over the size limit).
        return await _handle_problem(request, exc.__cause__)
    limit = parse_error_problem(exc.__cause__, "/body") if exc.__cause__ else None
    if limit is not None:
        # A JSON body nested too deeply to parse, or with an integer too long to convert: an
        # input limit (app.core.input_limits), answered as the request guard answers the rest.
        error = {"pointer": limit.pointer, "location": "body", "type": limit.type}
        return await _handle_problem(
            request,
            ValidationFailed(limit.message, errors=[{**error, "message": limit.message}]),
        )
    status = exc.status_code
    known = _problem_class(status)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    slug, title = (known.slug, known.title) if known else (phrase.lower().replace(" ", "-"), phrase)
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = getattr(exc, "headers", None)
    if status == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return problem_response(status, slug, title, detail, instance=request.url.path, headers=headers)


def _document_body_limit(app: FastAPI) -> None:
    """Every operation that takes a body can meet the body-size limit, answered with 413 by the
    request middleware before any route runs; its schema says so (found by the contract tests:
    a prompt within its 200,000 characters can exceed the default 1 MiB once encoded)."""
    add_to_schema(app, _document_413)


def _document_413(schema: dict[str, Any]) -> None:
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["responses"].setdefault(
                    "413",  # one object each: a later step may change one operation's
                    {
                        "description": "Request body too large.",
                        "content": {
                            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                        },
                    },
                )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _handle_problem)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _handle_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _handle_http)  # type: ignore[arg-type]
    _document_body_limit(app)
