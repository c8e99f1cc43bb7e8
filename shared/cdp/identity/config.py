"""Identifier types, priorities, limits and blocked values: per-deployment configuration.

Defaults follow Segment's Identity Resolution: ``user_id`` has the highest priority and
a limit of 1 (a profile never holds two user ids), ``email`` priority 2 limit 5, the
other types limit 5. A lower number is a higher priority; when a merge would exceed a
limit, the event's lowest-priority identifiers are dropped first.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_serializer, field_validator

DEFAULT_BLOCKED_VALUES = frozenset({
    "", "null", "none", "nil", "undefined", "anonymous", "unknown", "n/a", "na", "0", "-1",
    "test", "guest", "[object object]",
})


class IdentifierType(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")
    priority: int = Field(ge=1, le=1000, description="1 is the highest priority")
    limit: int = Field(ge=1, le=1000, description="how many values of this type one profile may hold")


DEFAULT_TYPES: tuple[IdentifierType, ...] = (
    IdentifierType(name="user_id", priority=1, limit=1),
    IdentifierType(name="email", priority=2, limit=5),
    IdentifierType(name="phone", priority=3, limit=5),
    IdentifierType(name="ios.idfa", priority=4, limit=5),
    IdentifierType(name="android.idfa", priority=4, limit=5),
    IdentifierType(name="device_id", priority=5, limit=5),
    IdentifierType(name="anonymous_id", priority=6, limit=5),
)
# External id types not configured explicitly get this priority and limit.
EXTERNAL_DEFAULT_PRIORITY = 5
EXTERNAL_DEFAULT_LIMIT = 5


class IdentityConfig(BaseModel):
    types: tuple[IdentifierType, ...] = DEFAULT_TYPES
    blocked_values: frozenset[str] = DEFAULT_BLOCKED_VALUES
    # Region assumed for phone numbers written without a +country code (ISO 3166 alpha-2);
    # None refuses such numbers rather than guessing.
    default_phone_region: str | None = None
    max_value_length: int = Field(default=512, ge=16, le=1024)

    @field_validator("types")
    @classmethod
    def _unique_names(cls, types: tuple[IdentifierType, ...]) -> tuple[IdentifierType, ...]:
        names = [t.name for t in types]
        if len(set(names)) != len(names):
            raise ValueError("identifier type names must be unique")
        return types

    @field_serializer("blocked_values")
    def _sorted(self, values: frozenset[str]) -> list[str]:
        return sorted(values)  # a stable form: the deployed environment must not change per synth

    def type_of(self, name: str) -> IdentifierType:
        for candidate in self.types:
            if candidate.name == name:
                return candidate
        return IdentifierType(name=name, priority=EXTERNAL_DEFAULT_PRIORITY, limit=EXTERNAL_DEFAULT_LIMIT)

    def is_blocked(self, value: str) -> bool:
        folded = value.strip().casefold()
        if folded in self.blocked_values:
            return True
        # All-zero ids (00000000-0000-0000-0000-000000000000, 0000, ...) are placeholders.
        stripped = folded.replace("-", "").replace(":", "")
        return bool(stripped) and set(stripped) == {"0"}
