"""Shapes shared by every resource: request base, pagination, problem documents."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar, get_args

import email_validator
from fastapi.openapi.models import Example
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.emails import normalized_email
from app.core.example_passwords import example_password_problem

T = TypeVar("T")

# Money travels as a decimal string ("0.0042"), never as a float.
Money = Annotated[
    Decimal,
    PlainSerializer(
        lambda value: format(value.normalize(), "f"), return_type=str, when_used="json"
    ),
]


# Whitespace as every regex dialect agrees on it: clients read a JSON Schema `pattern` in their
# own dialect, and what `\s` matches differs between them.
SPACES = " \t\n\r\f\v"
NOT_BLANK = r"[^ \t\n\r\f\v]"
# Marks text a request model keeps exactly as sent (see `RequestModel`).
VERBATIM = object()

Name = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=NOT_BLANK)]
FullName = Annotated[str, StringConstraints(max_length=200)]


def _not_an_example(value: str) -> str:
    problem = example_password_problem(value)
    if problem is not None:
        raise PydanticCustomError("example_password", problem)
    return value


# Secrets are taken verbatim: the spaces of a password are part of it. A new password is not
# one the examples print, where the settings refuse those (`app.core.example_passwords`).
Password = Annotated[
    str, StringConstraints(min_length=8, max_length=256), AfterValidator(_not_an_example), VERBATIM
]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096), VERBATIM]


def _email(value: str) -> str:
    try:
        return normalized_email(value)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None


# An address by its syntax (`format: email`, as sent: no display name, no padding), as
# `app.core.emails` checks it: special-use domains only where the settings accept them.
Email = Annotated[
    str,
    StringConstraints(max_length=254),
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
]


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date_time(value: Any) -> Any:
    """Refuse what pydantic would otherwise read as a Unix timestamp or a bare date."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and (_NUMBER.fullmatch(value) or _DATE_ONLY.fullmatch(value))
    ):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2030-01-31T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC; one Python cannot hold in UTC is refused, not a 500 later (found
    by an attacker: `9999-12-31T23:59:59-05:00` overflowed when converted)."""
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range",
            "the instant is out of range: it must lie between 0001-01-01 and 9999-12-31 in UTC",
        ) from None


# An instant as `format: date-time` says: a date and a time (without an offset, read as UTC);
# every date-time input is one, handed on in UTC.
DateTime = Annotated[datetime, BeforeValidator(_date_time), AfterValidator(_in_utc)]

MONEY_PATTERN = r"^(1000000(\.0{1,8})?|[0-9]{1,6}(\.[0-9]{1,8})?)$"


def _money(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(MONEY_PATTERN, value):
        raise ValueError("expected a decimal string from 0 to 1000000 with at most 8 places")
    return value


# An amount in US dollars as clients send it: an exact decimal string ("0.50"), never a float.
MoneyAmount = Annotated[
    Decimal,
    BeforeValidator(_money),
    PlainSerializer(
        lambda value: format(value.normalize(), "f"), return_type=str, when_used="json"
    ),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["0.50"]}),
]


def _is_verbatim(annotation: Any, metadata: list[Any]) -> bool:
    if VERBATIM in metadata:
        return True
    return any(VERBATIM in getattr(arg, "__metadata__", ()) for arg in get_args(annotation) if arg)


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error; text fields are checked exactly
    as sent (so the schema's lengths and patterns are the server's) and trimmed afterwards,
    except those marked ``VERBATIM`` (passwords, tokens)."""

    model_config = ConfigDict(extra="forbid")
    _trimmed: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._trimmed = frozenset(
            name
            for name, field in cls.model_fields.items()
            if not _is_verbatim(field.annotation, field.metadata)
        )

    @model_validator(mode="after")
    def _trim_text(self) -> Self:
        for name in self._trimmed:
            value = self.__dict__.get(name)
            if isinstance(value, str):
                self.__dict__[name] = value.strip(SPACES)
        return self


def body_example(key: str, summary: str, value: Any, description: str = "") -> dict[str, Example]:
    """A request body's example for the route's ``Body(openapi_examples=...)``: a whole body the
    API explorer (``/docs``) shows and sends as it is, valid as sent (ids of other objects are
    placeholders the description names). Without one, an explorer composes a body from the
    fields' examples and makes up a value for every field that has none (``1`` for a number
    with a minimum, ``{"additionalProp1": {}}`` for a free-form object). Declared once, beside
    its model."""
    example: Example = {"summary": summary, "value": value}
    if description:
        example["description"] = description
    return {key: example}


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(ResponseModel, Generic[T]):
    """One page of a collection."""

    items: list[T]
    total: int = Field(description="Number of items in the whole collection.")
    limit: int
    offset: int


class CursorPage(Page[T], Generic[T]):
    """One page of a collection that grows without bound, read page by page with cursors:
    send `next_cursor` back as `cursor` for the page after this one."""

    offset: int = Field(
        description="Number of items before this page (counted, when it follows a cursor)."
    )
    next_cursor: str | None = Field(
        description="Where the next page starts: pass it as `cursor`. `null` on the last page.",
        examples=["AQAGYfQsGqpACxxvPliiTX6fECw9Tl9qe5nXObs-57v-2SX_1RYBYWk"],
    )


class FieldError(BaseModel):
    pointer: str = Field(description="JSON pointer to the bad input, e.g. `/body/email`.")
    location: str = Field(description="`body`, `query`, `path` or `header`.")
    type: str = Field(description="Machine-readable error code.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (media type `application/problem+json`)."""

    type: str = Field(examples=["https://renum.dev/problems/not-found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["No team with this id."])
    instance: str | None = Field(default=None, examples=["/api/v1/teams/0b1c..."])
    request_id: str | None = Field(default=None, description="Quote it when reporting a problem.")
    errors: list[FieldError] | None = Field(
        default=None, description="One entry per bad field (validation errors)."
    )


_DESCRIPTIONS = {
    400: "Malformed request (for example, a body that is not valid JSON).",
    401: "Missing, expired or invalid credentials.",
    403: "Authenticated, but the role does not allow this.",
    404: "No such object in the caller's account.",
    409: "Conflicts with an existing object.",
    413: "Request body too large.",
    422: "The request failed validation; `errors` lists each bad field.",
    429: "A limit was reached (for example, concurrent executions per account).",
}


def link(operation_id: str, description: str, **values: Any) -> dict[str, Any]:
    """An OpenAPI link to ``operation_id``: each value is a runtime expression (or an object of
    them) for a parameter or, as ``requestBody``, for the body, e.g. ``"$response.body#/id"``."""
    body = values.pop("requestBody", None)
    found: dict[str, Any] = {"operationId": operation_id, "description": description}
    if values:
        found["parameters"] = values
    if body is not None:
        found["requestBody"] = body
    return found


def links(status: int, description: str, **targets: dict[str, Any]) -> dict[int | str, Any]:
    """An OpenAPI ``responses`` entry whose links lead from the result to what can follow it
    (create, then get, change, delete), so clients and stateful tests can chain operations."""
    return {status: {"description": description, "links": targets}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the problem documents an operation returns."""
    return {
        status: {
            "model": Problem,
            "description": _DESCRIPTIONS[status],
            "content": {"application/problem+json": {}},
            **({"headers": _RETRY_AFTER} if status == 429 else {}),
        }
        for status in statuses
    }


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
