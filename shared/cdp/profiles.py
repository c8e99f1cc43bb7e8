"""Reading profiles, accounts, histories and links from the storage layout.

The layout is the contract written by the unification stage (docs/identity.md,
"Storage layout"): an identifier item points at a profile, a merged profile points at
its survivor, the live profile item holds the identifiers, the folded state and the
ids merged into it; the events table holds each person's history per ``userId`` /
``anonymousId`` partition and the profile records (merge log, blocked merges, account
links) per profile id.

Every page read here costs a bounded number of reads whatever the size of the history:
partitions are queried with ``Limit`` from a position (``sk < cursor``, or an exclusive
start key) and merged, never read whole. The DynamoDB access itself is behind the
``ProfileTables`` port (``cdp.aws.profile_tables`` in the cloud and locally).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cdp.aws.event_store import event_of_item
from cdp.aws.identity_graph import account_key, home_ident_key, ident_key, profile_key
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import ProfileState, state_from_json
from cdp.keys import bounded

# Merge chains are short; the bound guards against a cycle in corrupt data.
MAX_MERGE_CHAIN = 64
# A page that keeps skipping items (filtered events, duplicate links) stops after this
# many rounds of queries and returns what it has, with a cursor to continue.
MAX_ROUNDS = 5
# Merge log entries read per profile id for the metadata (one Query each).
MAX_MERGE_LOG_ITEMS = 100


@dataclass(frozen=True)
class RecordPage:
    """One Query's answer: the items, and whether DynamoDB stopped before the end."""

    items: list[dict[str, Any]]
    truncated: bool


class ProfileTables(Protocol):
    """The reads the Profile API needs: items of the identity table, records of the events table."""

    def get_identity(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Identity table items by ``pk`` (absent keys left out)."""
        ...

    def get_records(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Events table items by ``(pk, sk)`` (absent keys left out)."""
        ...

    def query_records(self, pk: str, *, limit: int, descending: bool = False, below: str | None = None,
                      below_inclusive: bool = False, prefix: str | None = None,
                      after: str | None = None) -> RecordPage:
        """Items of one events table partition, in ``sk`` order.

        ``below``: only ``sk < below`` (``<=`` if inclusive); ``prefix``: only ``sk``
        beginning with it; ``after``: start after this ``sk`` (exclusive start key).
        """
        ...


# --- what is read ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserProfile:
    profile_id: str
    created_at: str
    updated_at: str
    identifiers: tuple[Identifier, ...]
    merged_from: tuple[str, ...]
    state: ProfileState
    tallies: str | None = None  # the ``agg`` JSON: aggregate states (cdp.segmentation.tallies)
    # Suppressed: no destination may receive this person's data (the item's ``suppressed``
    # attribute; activation checks it before every delivery).
    suppressed: bool = False

    def history_partitions(self) -> list[str]:
        """The events table partitions of this person: one per user id and anonymous id."""
        prefixes = {"user_id": "u#", "anonymous_id": "a#"}
        return sorted(prefixes[i.type] + i.value for i in self.identifiers if i.type in prefixes)

    def record_partitions(self) -> list[str]:
        """``p#`` partitions of this profile and of every profile merged into it."""
        return [f"p#{pid}" for pid in (self.profile_id, *self.merged_from)]


@dataclass(frozen=True)
class Account:
    group_id: str
    created_at: str
    updated_at: str
    state: ProfileState


@dataclass(frozen=True)
class StoredEvent:
    partition: str
    sort_key: str
    source_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class AccountLink:
    group_id: str


@dataclass
class MergeLog:
    merges: list[dict[str, Any]] = field(default_factory=list)
    blocked: list[dict[str, Any]] = field(default_factory=list)


K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Page(Generic[V, K]):
    """Items of one page, and the position after the last item considered (None: the end)."""

    items: list[V]
    next_position: K | None


def parse_ident_key(key: str) -> Identifier:
    """``ident#<type>:<value>`` -> Identifier (types never contain ``:``)."""
    type_name, _, value = key.removeprefix("ident#").partition(":")
    return Identifier(type_name, value)


def partition_rank(pk: str) -> str:
    """A stable tie-break between partitions that carries no identifier (cursors are shown to clients)."""
    return hashlib.sha256(pk.encode("utf-8")).hexdigest()[:16]


# --- merging sorted partitions, page by page ------------------------------------------------


def merge_partitions(
    partitions: Sequence[str],
    fetch: Callable[[str, K | None, int], RecordPage],
    key_of: Callable[[str, dict[str, Any]], K],
    *,
    descending: bool,
    limit: int,
    start: K | None,
    accept: Callable[[str, dict[str, Any]], bool] = lambda pk, item: True,
    max_rounds: int = MAX_ROUNDS,
) -> Page[tuple[str, dict[str, Any]], K]:
    """One page of the union of sorted partitions, in ``key_of`` order, after ``start``.

    ``fetch(pk, start, n)`` returns up to ``n`` items of a partition that come after
    ``start``. Each partition is asked for one item more than the page still needs; a
    partition that was cut short (``truncated``) may hold unread items below its last
    one, so only items up to the least advanced cut are taken in a round: the result
    is exactly the global order, whatever the partitions hold. Items with equal keys
    count once (the first partition's). ``accept`` filters items out; they still move
    the position, so a filtered page stays bounded (``max_rounds`` rounds of queries).
    """

    def after(a: K, b: K) -> bool:  # a comes after b in the page order
        return bool(a < b) if descending else bool(a > b)  # type: ignore[operator]

    taken: list[tuple[str, dict[str, Any]]] = []
    position = start
    for _ in range(max_rounds):
        want = limit - len(taken)
        fetched: dict[Any, tuple[str, dict[str, Any]]] = {}
        cut: K | None = None
        for pk in partitions:
            page = fetch(pk, position, want + 1)
            for item in page.items:
                fetched.setdefault(key_of(pk, item), (pk, item))
            if page.truncated and page.items:
                last = key_of(pk, page.items[-1])
                if cut is None or after(cut, last):
                    cut = last  # the least advanced partition bounds what is complete
        ordered = sorted(fetched, reverse=descending)
        complete = [k for k in ordered if cut is None or not after(k, cut)]
        consumed = 0
        for key in complete:
            if len(taken) == limit:
                break
            consumed += 1
            position = key
            pk, item = fetched[key]
            if accept(pk, item):
                taken.append((pk, item))
        more = consumed < len(complete) or cut is not None
        if not more:
            return Page(taken, None)
        if len(taken) == limit:
            return Page(taken, position)
    return Page(taken, position)


# --- the reader ---------------------------------------------------------------------------------


def _strings(item: dict[str, Any], name: str) -> tuple[str, ...]:
    return tuple(sorted(str(v) for v in item.get(name) or ()))


def _user_profile(profile_id: str, item: dict[str, Any]) -> UserProfile:
    return UserProfile(
        profile_id=profile_id,
        created_at=str(item.get("created_at", "")),
        updated_at=str(item.get("updated_at") or item.get("created_at", "")),
        identifiers=tuple(sorted(parse_ident_key(k) for k in _strings(item, "ids"))),
        merged_from=_strings(item, "merged_from"),
        state=state_from_json(item.get("state")),
        tallies=item.get("agg"),
        suppressed=item.get("suppressed") is True,
    )


EventPosition = tuple[str, str]  # (sort key, partition rank) of the last event considered


class ProfileReader:
    """Profiles, accounts and their histories and links, as the storage layout holds them."""

    def __init__(self, tables: ProfileTables, clock: Callable[[], float] = time.time) -> None:
        self._tables = tables
        self._clock = clock

    # --- profiles and accounts -------------------------------------------------------------

    def live_profiles(self, profile_ids: Iterable[str]) -> dict[str, UserProfile | None]:
        """Each id's live profile (following merges), None where there is none."""
        pending = {pid: pid for pid in profile_ids}
        found: dict[str, UserProfile | None] = {}
        for _ in range(MAX_MERGE_CHAIN):
            if not pending:
                break
            items = self._tables.get_identity(sorted({profile_key(c) for c in pending.values()}))
            # A profile created from one anonymous id lives in that identifier's item (its home).
            home_keys = {c: home_ident_key(c) for c in pending.values() if profile_key(c) not in items}
            wanted = sorted({k for k in home_keys.values() if k})
            home_items = self._tables.get_identity(wanted) if wanted else {}
            following: dict[str, str] = {}
            for original, current in pending.items():
                item = items.get(profile_key(current))
                home = home_items.get(home_keys.get(current) or "")
                if item is None and home is not None and home.get("solo") and home.get("profile_id") == current:
                    found[original] = _user_profile(current, {**home, "ids": home.get("ids") or {home["pk"]}})
                elif item is None and home is not None and home.get("profile_id") not in (None, current):
                    following[original] = str(home["profile_id"])  # merged away: its home points on
                elif item is None:
                    found[original] = None
                elif item.get("status") == "merged" and item.get("merged_into"):
                    following[original] = str(item["merged_into"])
                elif item.get("status") == "live":
                    found[original] = _user_profile(current, item)
                else:
                    found[original] = None
            pending = following
        found.update(dict.fromkeys(pending))
        return found

    def profile_by_id(self, profile_id: str) -> UserProfile | None:
        return self.live_profiles([profile_id])[profile_id]

    def profile_by_identifier(self, identifier: Identifier) -> UserProfile | None:
        """The live profile holding a (normalised) identifier."""
        key = ident_key(identifier)
        item = self._tables.get_identity([key]).get(key)
        if item is None or not item.get("profile_id"):
            return None
        return self.profile_by_id(str(item["profile_id"]))

    def account(self, group_id: str) -> Account | None:
        key = account_key(group_id)
        item = self._tables.get_identity([key]).get(key)
        if item is None:
            return None
        return Account(group_id=str(item.get("group_id", group_id)), created_at=str(item.get("created_at", "")),
                       updated_at=str(item.get("updated_at") or item.get("created_at", "")),
                       state=state_from_json(item.get("state")))

    # --- history -----------------------------------------------------------------------------

    def events(self, profile: UserProfile, limit: int, start: EventPosition | None = None,
               accept: Callable[[dict[str, Any]], bool] = lambda event: True
               ) -> Page[StoredEvent, EventPosition]:
        """The profile's events, newest first; ``limit + 1`` items per partition per round."""
        now = self._clock()

        def fetch(pk: str, position: EventPosition | None, n: int) -> RecordPage:
            if position is None:
                return self._tables.query_records(pk, limit=n, descending=True)
            sort_key, rank = position
            # Ties on the sort key go by partition rank, so equal keys are neither lost nor repeated.
            return self._tables.query_records(pk, limit=n, descending=True, below=sort_key,
                                              below_inclusive=partition_rank(pk) < rank)

        def key_of(pk: str, item: dict[str, Any]) -> EventPosition:
            return str(item["sk"]), partition_rank(pk)

        def keep(pk: str, item: dict[str, Any]) -> bool:
            expires = item.get("expires_at")
            if expires is not None and float(expires) < now:
                return False  # past its TTL, not yet deleted by DynamoDB
            return accept(_event_of(item))

        page = merge_partitions(profile.history_partitions(), fetch, key_of, descending=True, limit=limit,
                                start=start, accept=keep)
        return Page([StoredEvent(pk, str(item["sk"]), str(item.get("source_id", "")), _event_of(item))
                     for pk, item in page.items], page.next_position)

    # --- links ------------------------------------------------------------------------------------

    def accounts_of(self, profile: UserProfile, limit: int, start: str | None = None
                    ) -> Page[AccountLink, str]:
        """Accounts the person belongs to (through any profile merged into it), by group id."""

        def fetch(pk: str, position: str | None, n: int) -> RecordPage:
            return self._tables.query_records(pk, limit=n, prefix="group#", after=position)

        page = merge_partitions(profile.record_partitions(), fetch, lambda pk, item: str(item["sk"]),
                                descending=False, limit=limit, start=start)
        return Page([AccountLink(str(item.get("group_id") or str(item["sk"]).removeprefix("group#")))
                     for _, item in page.items], page.next_position)

    def members_of(self, group_id: str, limit: int, start: str | None = None,
                   max_rounds: int = MAX_ROUNDS) -> Page[UserProfile, str]:
        """The account's members as live profiles, each once, in order of member record.

        A member record names the profile at the time; after merges several records
        lead to one live profile. It is listed at its first record only (the smallest
        of its ids with a record), which a page can check with one ``BatchGetItem``
        whatever came before, so pages never repeat a profile.
        """
        pk = f"g#{bounded(group_id)}"
        taken: list[UserProfile] = []
        position = start
        for _ in range(max_rounds):
            want = limit - len(taken)
            page = self._tables.query_records(pk, limit=want + 1, prefix="member#", after=position)
            named = [(str(i["sk"]), str(i.get("profile_id") or str(i["sk"]).removeprefix("member#")))
                     for i in page.items]
            live = self.live_profiles({pid for _, pid in named})
            earlier: set[tuple[str, str]] = set()
            for _, pid in named:
                member = live[pid]
                if member is not None:
                    earlier.update((pk, f"member#{other}") for other in (member.profile_id, *member.merged_from)
                                   if other < pid)
            has_record = set(self._tables.get_records(sorted(earlier))) if earlier else set()
            consumed = 0
            for sort_key, pid in named:
                if len(taken) == limit:
                    break
                consumed += 1
                position = sort_key
                profile = live[pid]
                if profile is None:
                    continue
                ids = (profile.profile_id, *profile.merged_from)
                if any(other < pid and (pk, f"member#{other}") in has_record for other in ids):
                    continue  # listed at its earlier record
                if any(p.profile_id == profile.profile_id for p in taken):
                    continue
                taken.append(profile)
            if consumed == len(named) and not page.truncated:
                return Page(taken, None)
            if len(taken) == limit:
                return Page(taken, position)
        return Page(taken, position)

    # --- merge log ------------------------------------------------------------------------------

    def merge_log(self, profile: UserProfile) -> MergeLog:
        """Merges into this profile (and into the profiles merged into it), and blocked merges."""
        log = MergeLog()
        for pk in profile.record_partitions():
            log.merges.extend(self._tables.query_records(pk, limit=MAX_MERGE_LOG_ITEMS, prefix="merge#").items)
            log.blocked.extend(self._tables.query_records(pk, limit=MAX_MERGE_LOG_ITEMS, prefix="blocked#").items)
        log.merges.sort(key=lambda m: (str(m.get("merged_at", "")), str(m.get("sk", ""))))
        log.blocked.sort(key=lambda b: (str(b.get("at", "")), str(b.get("sk", ""))))
        return log


def _event_of(item: dict[str, Any]) -> dict[str, Any]:
    """The stored event of a history item (compressed ``z``, or ``payload`` of older items)."""
    event = event_of_item(item)
    return event if isinstance(event, dict) else {}
