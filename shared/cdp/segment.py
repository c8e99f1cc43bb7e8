"""Pydantic models of the Segment tracking spec: the six calls and a batch.

These models validate every incoming event (collector and stream consumer) and
generate the OpenAPI document, so what is documented is what is enforced.
Unknown fields are kept (Segment passes them through); known fields are typed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_ID_LENGTH = 1024
MAX_NAME_LENGTH = 1024
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")


# Whitespace as JSON Schema's (ECMAScript's) \s knows it, so the published schema's
# pattern and this validator agree (Python's str.strip() also strips \x1c-\x1f, \x85).
ECMA_WHITESPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000\ufeff"


def _id_value(value: Any) -> Any:
    """Segment accepts numeric ids and stores them as strings; other types are errors."""
    if isinstance(value, bool):
        raise ValueError("must be a string, not a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        stripped = value.strip(ECMA_WHITESPACE)
        if not stripped:
            raise ValueError("must not be empty")
        return stripped
    raise ValueError(f"must be a string, not {type(value).__name__}")


Identifier = Annotated[
    str,
    BeforeValidator(_id_value),
    Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S"),
    # Integers are accepted and stored as strings, as Segment does.
    WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": r"\S"},
        {"type": "integer"},
    ], "examples": ["user-123"]}),
]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]


def _timestamp_text(value: Any) -> Any:
    """Timestamps are ISO 8601 strings; numbers are refused (their unit is ambiguous)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 string, not {type(value).__name__}")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_timestamp_text)]
Properties = dict[str, Any]


class Library(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    version: str | None = None


class ExternalId(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Identifier
    type: Name
    collection: str | None = None
    encoding: str | None = None


class Context(BaseModel):
    """``context``: free-form, with the fields later stages rely on typed."""

    model_config = ConfigDict(extra="allow")
    ip: str | None = Field(default=None, max_length=64)
    library: Library | None = None
    traits: Properties | None = None
    externalIds: list[ExternalId] | None = None
    locale: str | None = Field(default=None, max_length=64)
    userAgent: str | None = Field(default=None, max_length=2048)


Integrations = dict[str, StrictBool | dict[str, Any]]


class CommonFields(BaseModel):
    """Fields every call may carry (Segment "common fields")."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        # What _needs_an_identity enforces, said in the schema for generated clients.
        json_schema_extra={"anyOf": [
            {"required": ["userId"], "properties": {"userId": {"type": ["string", "integer"]}}},
            {"required": ["anonymousId"], "properties": {"anonymousId": {"type": ["string", "integer"]}}},
        ]},
    )

    anonymousId: Identifier | None = None
    userId: Identifier | None = None
    messageId: Identifier | None = None
    context: Context | None = None
    integrations: Integrations | None = None
    timestamp: Timestamp | None = None
    originalTimestamp: Timestamp | None = None
    sentAt: Timestamp | None = None
    receivedAt: Timestamp | None = None
    version: StrictInt | StrictStr | None = None
    channel: str | None = None

    @model_validator(mode="after")
    def _needs_an_identity(self) -> CommonFields:
        if self.userId is None and self.anonymousId is None:
            raise ValueError("either userId or anonymousId is required")
        return self


class IdentifyCall(CommonFields):
    type: Literal["identify"] = "identify"
    traits: Properties | None = None


class TrackCall(CommonFields):
    type: Literal["track"] = "track"
    event: Name = Field(min_length=1)
    properties: Properties | None = None


class PageCall(CommonFields):
    type: Literal["page"] = "page"
    name: Name | None = None
    category: Name | None = None
    properties: Properties | None = None


class ScreenCall(CommonFields):
    type: Literal["screen"] = "screen"
    name: Name | None = None
    category: Name | None = None
    properties: Properties | None = None


class GroupCall(CommonFields):
    type: Literal["group"] = "group"
    groupId: Identifier
    traits: Properties | None = None


class AliasCall(CommonFields):
    type: Literal["alias"] = "alias"
    previousId: Identifier
    userId: Identifier

    # A field validator (userId is validated first: it is declared in CommonFields), so the
    # refusal names the field, as every other 400 does.
    @field_validator("previousId")
    @classmethod
    def _not_to_itself(cls, previous_id: str, info: ValidationInfo) -> str:
        if previous_id == info.data.get("userId"):
            raise ValueError("previousId and userId must differ")
        return previous_id


SegmentCall = Annotated[
    Annotated[IdentifyCall, Tag("identify")]
    | Annotated[TrackCall, Tag("track")]
    | Annotated[PageCall, Tag("page")]
    | Annotated[ScreenCall, Tag("screen")]
    | Annotated[GroupCall, Tag("group")]
    | Annotated[AliasCall, Tag("alias")],
    Discriminator(lambda v: v.get("type") if isinstance(v, dict) else getattr(v, "type", None)),
]

CALL_MODELS: dict[str, type[CommonFields]] = {
    "identify": IdentifyCall,
    "track": TrackCall,
    "page": PageCall,
    "screen": ScreenCall,
    "group": GroupCall,
    "alias": AliasCall,
}
SEGMENT_CALL_ADAPTER: TypeAdapter[Any] = TypeAdapter(SegmentCall)


class BatchRequest(BaseModel):
    """``/v1/batch``: up to 2,500 calls; batch-level context and integrations apply to each."""

    model_config = ConfigDict(extra="allow")
    batch: list[SegmentCall] = Field(min_length=1, max_length=2500)
    context: Context | None = None
    integrations: Integrations | None = None
    sentAt: Timestamp | None = None
    writeKey: str | None = None


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in the request's batch (0 for single calls).")
    messageId: str | None = None
    field: str | None = Field(default=None, description="Dotted path of the offending field, if any.")
    reason: str


class AcceptedResponse(BaseModel):
    success: Literal[True] = True
    accepted: int = Field(default=1, description="Events stored.")
    rejected: list[RejectedEvent] = Field(
        default_factory=list,
        description="Events of a batch that were refused (kept in the quarantine with their reason).",
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None
    rejected: list[RejectedEvent] | None = None


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: ErrorDetail
