"""Shapes shared by every resource: request base, pagination, problem documents."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

T = TypeVar("T")

# Money travels as a decimal string ("0.0042"), never as a float.
Money = Annotated[
    Decimal,
    PlainSerializer(
        lambda value: format(value.normalize(), "f"), return_type=str, when_used="json"
    ),
]


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(ResponseModel, Generic[T]):
    """One page of a collection."""

    items: list[T]
    total: int = Field(description="Number of items in the whole collection.")
    limit: int
    offset: int


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


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the problem documents an operation returns."""
    return {
        status: {
            "model": Problem,
            "description": _DESCRIPTIONS[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }
