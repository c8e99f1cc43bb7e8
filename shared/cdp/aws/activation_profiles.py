"""Profile reads for activation: an event's person for the router, profile views for the
destination Lambdas (``cdp.activation.enrichment``).

Reads only: ``BatchGetItem`` of identity-table items (an identifier's item, then its
profile's, following merges: ``cdp.profiles.ProfileReader``) and a consistent ``Query``
of a profile's memberships.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cdp.activation.dispatch import Person
from cdp.activation.enrichment import person_view
from cdp.aws.identity_graph import ident_key
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_tables import DynamoProfileTables
from cdp.identity.identifiers import Identifier, IdentifierRefused, normalise_id
from cdp.profiles import ProfileReader, UserProfile


def _candidates(event: Mapping[str, Any]) -> list[str]:
    """The identity-table keys of an event's person: its userId's, then its anonymousId's."""
    keys = []
    for kind, field in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        raw = event.get(field)
        if raw in (None, ""):
            continue
        try:
            keys.append(ident_key(Identifier(kind, normalise_id(raw))))
        except IdentifierRefused:
            continue
    return keys


class ActivationProfiles:
    def __init__(self, dynamodb: Any, identity_table: str, events_table: str, memberships_table: str) -> None:
        self._tables = DynamoProfileTables(dynamodb, identity_table, events_table)
        self._reader = ProfileReader(self._tables)
        self._memberships = MembershipStore(dynamodb, memberships_table)

    def persons_of(self, events: Sequence[Mapping[str, Any]], audiences: Iterable[str]) -> list[Person]:
        """Each event's person, for a whole batch at once: one ``BatchGetItem`` round of the
        events' identifier items, one of their profiles (following merges), and one of the
        people's memberships of ``audiences`` (the trigger rules' audience conditions, so
        ``Person.audiences`` holds only those)."""
        candidates = [_candidates(event) for event in events]
        items = self._tables.get_identity(sorted({key for keys in candidates for key in keys}))
        chosen: list[str | None] = []
        for keys in candidates:
            owner = next((str(items[k]["profile_id"]) for k in keys if items.get(k, {}).get("profile_id")), None)
            chosen.append(owner)
        profiles = self._reader.live_profiles(sorted({pid for pid in chosen if pid}))
        wanted = sorted(set(audiences))
        live = sorted({p.profile_id for p in profiles.values() if p is not None})
        memberships = self._memberships.some_of_profiles({pid: wanted for pid in live}) if wanted and live else {}
        people = []
        for pid in chosen:
            profile = profiles.get(pid) if pid else None
            if profile is None:
                people.append(Person(None))
                continue
            member_of = frozenset(aid for aid, m in memberships.get(profile.profile_id, {}).items() if m.member)
            people.append(Person(profile.profile_id, member_of, person_view(profile)))
        return people

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Person:
        """The event's profile (by its userId, else its anonymousId) and, if asked, the
        audiences it is in. An event of someone the stream consumer has not recorded yet
        has no profile: its messages are grouped by its own ids, and it is in no audience."""
        for kind, field in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
            raw = event.get(field)
            if raw in (None, ""):
                continue
            try:
                identifier = Identifier(kind, normalise_id(raw))
            except IdentifierRefused:
                continue
            profile = self._reader.profile_by_identifier(identifier)
            if profile is not None:
                audiences = frozenset(self._memberships.audiences_of(profile.profile_id)) if need_audiences \
                    else frozenset()
                return Person(profile.profile_id, audiences, person_view(profile))
        return Person(None)

    def profiles(self, profile_ids: Iterable[str]) -> dict[str, UserProfile | None]:
        """Each id's live profile (following merges), None where there is none."""
        return self._reader.live_profiles(profile_ids)

    def audiences_of(self, profile_id: str) -> list[str]:
        return self._memberships.audiences_of(profile_id)

    def memberships_of(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        """Current membership of (profile, audience) pairs (consistent): profile -> audience -> member."""
        found = self._memberships.some_of_profiles(wanted)
        return {pid: {aid: m.member for aid, m in audiences.items()} for pid, audiences in found.items()}
