"""Segment traffic of people over time, for benchmarking identity resolution.

Where ``bench.segment_traffic`` draws each event's person at random, this generator
simulates people: each has a type, devices, sessions spread over the run's time
window, and calls in the order a person makes them (browse anonymously, sign up, come
back logged in, log in on a second device or in the app). The people's events are
merged into one stream in time order, as a collector receives them at ``rate_per_s``,
and sent in the SDK's ``/v1/batch`` requests (same event bodies, contexts and
properties as ``bench.segment_traffic``, built by the real SDK). Everything, message
ids included, follows from the seed.

Reference mix (``IdentityMix()``; every share is of people unless said otherwise):

- **people**: 70 % anonymous visitors who never identify; 8 % leads (a form or a
  CRM-like import: ``identify`` with an email and the anonymousId, no userId); 22 %
  users with a userId.
- **sessions**: mean 1.3 per anonymous visitor, 2 per lead, 4 per user (at least one
  per device); 6 events per session on average (geometric, at most 40), 20 s apart
  on average (exponential), so one person's events rarely share a Kinesis batch at
  100 events/s. Web sessions open with a page, then pages (55 %) and tracks; app
  sessions are screens (60 %) and tracks.
- **identify**: half of the users sign up or log in during their first session
  (anonymous events first, then ``identify`` with userId and traits: email, name,
  plan, createdAt); the others are logged in from their first event (a cookie from
  before the window). Logged-in web sessions open with an ``identify`` half of the time
  (many sites call it on every load). 5 % of users ``alias`` their anonymousId to the
  new userId at sign-up, before the identify.
- **devices**: every person starts on one web browser (an anonymousId); 40 % of users
  come back on a second browser and 35 % use the mobile app (60 % iOS): each starts
  anonymous and logs in with ``identify``, which merges that device's profile into the
  user's. App events carry ``context.device.id``, ``context.device.advertisingId`` for
  half of the installs, and ``context.traits`` (email, name) once logged in, as the
  mobile SDKs send them.
- **leads**: the lead identifies (email only) in the first session at a random point;
  25 % of leads sign up later (``identify`` with a userId and the same email), half
  of them on a new browser.
- **accounts (B2B)**: 30 % of users belong to an account (4 members on average); they
  send ``group`` (groupId, account traits) in their first logged-in session and in 30 %
  of the later ones.
- **shared devices**: 1 % of users first appear on another user's browser (same
  anonymousId, their own userId): the merge protection must keep the two apart.

The run's window is ``events / rate_per_s`` seconds and every session starts at a
uniformly random moment of it: returning visits, which take days in reality, are
compressed into the window so that a run of any length contains them in the same
proportion; within a session, events are spaced as a person clicks. The run starts on
an empty identity graph, so each person's first event creates a profile: the figures
are those of a graph that meets every person for the first time in the window.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.segment_traffic import (
    _PLANS,
    _SCREENS,
    _TRACK_EVENTS,
    SegmentTrafficGenerator,
)

# Where the window starts (fixed, so that the output depends on the seed only). The
# collector re-bases every timestamp on its receipt time (sentAt correction), so the
# stored timestamps are recent whatever this is.
DEFAULT_START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
# The SDK flushes its queue a moment after the last event it holds.
FLUSH_DELAY = timedelta(milliseconds=500)
MAX_EVENTS_PER_SESSION = 40

_FIRST_NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiro", "Ines", "Jonas", "Kai", "Lena")
_LAST_NAMES = ("Silva", "Okafor", "Müller", "Tanaka", "Novak", "Haddad", "Brown", "García", "Rossi", "Kowalski")
_EMAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")
_INDUSTRIES = ("Retail", "Software", "Logistics", "Healthcare", "Education", "Manufacturing")


@dataclass(frozen=True)
class IdentityMix:
    """The traffic's shape. Shares are of people unless the name says otherwise."""

    rate_per_s: float = 20.0  # events per second reaching the collector
    anonymous_share: float = 0.70  # never identify
    lead_share: float = 0.08  # identify with an email only; the rest are users with a userId
    lead_signs_up: float = 0.25  # of leads: later identify with a userId and the same email
    signs_up_in_window: float = 0.50  # of users: first session anonymous, then identify
    identify_per_logged_in_session: float = 0.50  # a logged-in web session opens with identify
    second_browser: float = 0.40  # of users
    mobile_app: float = 0.35  # of users
    ios_share: float = 0.60  # of app installs; the rest Android
    advertising_id: float = 0.50  # of app installs: advertisingId sent (tracking allowed)
    b2b: float = 0.30  # of users: member of an account
    members_per_account: float = 4.0
    group_per_later_session: float = 0.30  # of a B2B user's later logged-in sessions
    alias_at_signup: float = 0.05  # of users who sign up in the window
    shared_device: float = 0.01  # of users: first seen on another user's browser
    sessions_anonymous: float = 1.3  # mean sessions per person, by type
    sessions_lead: float = 2.0
    sessions_user: float = 4.0
    events_per_session: float = 6.0  # mean (page, track, screen; identify/group/alias come on top)
    think_time_s: float = 20.0  # mean time between two events of a session

    def describe(self) -> list[str]:
        """The mix in words, for reports."""
        user_share = 1 - self.anonymous_share - self.lead_share
        return [
            f"people: {self.anonymous_share:.0%} anonymous only, {self.lead_share:.0%} leads (identify with email "
            f"only + anonymousId; {self.lead_signs_up:.0%} of them sign up later), {user_share:.0%} users with a "
            "userId",
            f"users: {self.signs_up_in_window:.0%} sign up in their first session (anonymous first), the rest are "
            f"logged in from the start; {self.alias_at_signup:.0%} alias at sign-up; logged-in web sessions open "
            f"with identify {self.identify_per_logged_in_session:.0%} of the time",
            f"devices: every person 1 browser; users +1 browser {self.second_browser:.0%}, mobile app "
            f"{self.mobile_app:.0%} ({self.ios_share:.0%} iOS, advertisingId {self.advertising_id:.0%}), each "
            "anonymous until login",
            f"B2B: {self.b2b:.0%} of users in accounts of {self.members_per_account:g} members on average; "
            f"shared browsers: {self.shared_device:.0%} of users",
            f"sessions per person (mean): anonymous {self.sessions_anonymous:g}, lead {self.sessions_lead:g}, user "
            f"{self.sessions_user:g}; {self.events_per_session:g} events per session (mean), "
            f"{self.think_time_s:g} s apart; stream rate {self.rate_per_s:g} events/s",
        ]


REFERENCE_MIX = IdentityMix()


@dataclass
class Device:
    anonymous_id: str
    app: str | None = None  # None: a browser; "ios" / "android": the mobile app
    device_id: str | None = None
    advertising_id: str | None = None
    logged_in: bool = False  # the SDK on this device knows the userId


@dataclass
class Person:
    kind: str  # "anonymous" | "lead" | "user"
    name: str
    email: str | None = None
    user_id: str | None = None
    devices: list[Device] = field(default_factory=list)
    account: int | None = None
    aliases: bool = False
    signs_up_in_window: bool = False
    lead_signs_up: bool = False
    shares_device_with: int | None = None  # index of the person whose browser this one uses


@dataclass(frozen=True)
class _Call:
    """One call a person makes, before the SDK renders it."""

    at: float  # seconds into the window
    order: int  # tie-breaker: the person's own order
    kind: str
    person: int
    device: int
    session: int  # the person's session number
    logged_in: bool  # the SDK on this device knows the userId (it sends it)
    lead_form: bool = False  # an identify with the email only


@dataclass
class TrafficStats:
    """The realised mix of the events kept in the stream, for the report and the tests."""

    population: Counter[str] = field(default_factory=Counter)  # every person made, by kind
    planned_sessions: int = 0  # every session made, in the window or not
    planned_session_events: int = 0  # their page / track / screen events
    people: dict[int, str] = field(default_factory=dict)  # person index -> kind, of those in the stream
    devices: set[tuple[int, int]] = field(default_factory=set)  # (person, device) seen
    sessions: set[tuple[int, int]] = field(default_factory=set)  # (person, session) seen
    calls: Counter[str] = field(default_factory=Counter)
    events_by_person_kind: Counter[str] = field(default_factory=Counter)
    identifying: set[int] = field(default_factory=set)  # people who identify or alias
    accounts: set[str] = field(default_factory=set)  # groupIds sent
    b2b_users: set[int] = field(default_factory=set)
    shared_devices: set[int] = field(default_factory=set)  # people on another user's browser
    window_s: float = 0.0

    def count(self, call: _Call, person: Person, group_id: str | None) -> None:
        self.people[call.person] = person.kind
        self.devices.add((call.person, call.device))
        self.sessions.add((call.person, call.session))
        self.calls[call.kind] += 1
        self.events_by_person_kind[person.kind] += 1
        if call.kind in ("identify", "alias"):
            self.identifying.add(call.person)
        if group_id is not None:
            self.accounts.add(group_id)
            self.b2b_users.add(call.person)
        if person.shares_device_with is not None:
            self.shared_devices.add(call.person)

    def share(self, kind: str) -> float:
        """Share of the people in the stream who are of this kind (people with more
        sessions are more likely to be in the window: users more than visitors)."""
        return sum(1 for k in self.people.values() if k == kind) / max(len(self.people), 1)

    def population_share(self, kind: str) -> float:
        """Share of everyone made (in the window or not) who is of this kind: the mix's parameter."""
        return self.population[kind] / max(sum(self.population.values()), 1)

    def devices_per_person(self, kind: str | None = None) -> float:
        people = [p for p, k in self.people.items() if kind in (None, k)]
        wanted = set(people)
        return sum(1 for p, _ in self.devices if p in wanted) / max(len(people), 1)

    def describe(self) -> list[str]:
        people = len(self.people)
        events = sum(self.calls.values())
        session_events = self.calls["page"] + self.calls["track"] + self.calls["screen"]
        return [
            f"population: {self.population_share('anonymous'):.1%} anonymous only, "
            f"{self.population_share('lead'):.1%} leads, {self.population_share('user'):.1%} users",
            f"people in the stream: {people:,} ({self.share('anonymous'):.1%} anonymous only, "
            f"{self.share('lead'):.1%} leads, {self.share('user'):.1%} users); "
            f"{len(self.identifying) / max(people, 1):.1%} identify or alias in the window; "
            f"{events / max(people, 1):.1f} events per person",
            f"devices (anonymousIds) per person: {self.devices_per_person():.2f} overall, "
            f"{self.devices_per_person('user'):.2f} per user",
            f"sessions in the stream: {len(self.sessions):,}, {session_events / max(len(self.sessions), 1):.1f} "
            "page/track/screen events per session (sessions cut by the window's edges included; all sessions "
            f"made: {self.planned_session_events / max(self.planned_sessions, 1):.1f}); window {self.window_s:,.0f} s",
            f"accounts: {len(self.accounts):,} with {len(self.b2b_users):,} members in the stream; "
            f"{self.calls['alias']:,} aliases; {len(self.shared_devices):,} users on a shared browser",
            "calls: " + ", ".join(f"{k} {v / max(events, 1):.1%}" for k, v in self.calls.most_common()),
            "events by person type: "
            + ", ".join(f"{k} {v / max(events, 1):.1%}" for k, v in self.events_by_person_kind.most_common()),
        ]


class IdentityTrafficGenerator(SegmentTrafficGenerator):
    """People with devices and sessions over a time window; deterministic given the seed."""

    def __init__(
        self,
        write_key: str,
        seed: int = 7,
        mix: IdentityMix = REFERENCE_MIX,
        start: datetime | None = None,
    ) -> None:
        super().__init__(write_key, seed=seed, start=start or DEFAULT_START)
        self.mix = mix
        self.people: list[Person] = []
        self.stats = TrafficStats()
        self._accounts: list[dict[str, Any]] = []

    # --- the stream ----------------------------------------------------------------------

    def events(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` events of a window of ``count / rate_per_s`` seconds, in time order.

        Sessions start from a lead-in before the window on, so that the window opens on a
        stream already at its rate: what happened before it is cut off, as is what comes
        after it (sessions running on, and the excess of the last people made).
        """
        window = count / self.mix.rate_per_s
        lead_in = 2 * self.mix.events_per_session * self.mix.think_time_s
        calls: list[_Call] = []
        inside = 0
        while inside < count:
            made = [c for c in self._person_calls(window, lead_in) if c.at >= 0]
            inside += sum(1 for c in made if c.at < window)
            calls.extend(made)
        calls.sort(key=lambda c: (c.at, c.person, c.order))
        calls = calls[:count]
        self.stats.window_s = window
        return [self._render(call) for call in calls]

    def _sent_at(self, batch_index: int, batch: list[dict[str, Any]]) -> datetime:
        """As the SDK flushes: a moment after the last event of the batch."""
        return datetime.fromisoformat(batch[-1]["timestamp"]) + FLUSH_DELAY

    # --- people ---------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _geometric(self, mean: float, cap: int = 1000) -> int:
        """1, 2, 3, ... with the given mean."""
        if mean <= 1:
            return 1
        more = 1 - 1 / mean
        n = 1
        while n < cap and self._rng.random() < more:
            n += 1
        return n

    def _new_person(self) -> Person:
        mix, rng = self.mix, self._rng
        n = len(self.people)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        draw = rng.random()
        kind = (
            "anonymous"
            if draw < mix.anonymous_share
            else "lead"
            if draw < mix.anonymous_share + mix.lead_share
            else "user"
        )
        person = Person(kind, f"{first} {last}")
        person.devices.append(Device(self._uuid()))
        if kind != "anonymous":
            local = f"{first}.{last}{n}".lower().replace("é", "e").replace("ü", "u").replace("í", "i")
            person.email = f"{local}@{rng.choice(_EMAIL_DOMAINS)}"
        if kind == "lead":
            person.lead_signs_up = rng.random() < mix.lead_signs_up
            if person.lead_signs_up:
                person.user_id = f"usr_{rng.getrandbits(48):012x}"
                if rng.random() < 0.5:
                    person.devices.append(Device(self._uuid()))
        elif kind == "user":
            person.user_id = f"usr_{rng.getrandbits(48):012x}"
            person.signs_up_in_window = rng.random() < mix.signs_up_in_window
            person.aliases = person.signs_up_in_window and rng.random() < mix.alias_at_signup
            earlier_users = [i for i, p in enumerate(self.people) if p.kind == "user" and p.shares_device_with is None]
            if earlier_users and rng.random() < mix.shared_device:
                person.shares_device_with = rng.choice(earlier_users)
                person.devices[0] = Device(self.people[person.shares_device_with].devices[0].anonymous_id)
            if rng.random() < mix.second_browser:
                person.devices.append(Device(self._uuid()))
            if rng.random() < mix.mobile_app:
                app = "ios" if rng.random() < mix.ios_share else "android"
                ad_id = self._uuid() if rng.random() < mix.advertising_id else None
                person.devices.append(Device(self._uuid(), app, self._uuid().upper(), ad_id))
            if rng.random() < mix.b2b:
                person.account = self._account_for_new_member()
            if not person.signs_up_in_window:
                person.devices[0].logged_in = True  # a cookie from before the window
        self.people.append(person)
        return person

    def _account_for_new_member(self) -> int:
        """A new account once per ``members_per_account`` members on average, else an existing one."""
        if not self._accounts or self._rng.random() < 1 / self.mix.members_per_account:
            n = len(self._accounts)
            self._accounts.append(
                {
                    "group_id": f"acct_{self._rng.getrandbits(32):08x}",
                    "traits": {
                        "name": f"{self._rng.choice(_LAST_NAMES)} {self._rng.choice(('GmbH', 'Ltd', 'Inc', 'SA'))}",
                        "industry": self._rng.choice(_INDUSTRIES),
                        "employees": self._rng.choice((12, 45, 120, 800, 5200)),
                        "plan": self._rng.choice(_PLANS),
                        "website": f"https://account{n}.example.com",
                    },
                }
            )
        return self._rng.randrange(len(self._accounts))

    def _sessions(self, person: Person, window: float, lead_in: float) -> list[tuple[float, int]]:
        """(start, device) of each session, in time order; every device gets one."""
        mean = {"anonymous": self.mix.sessions_anonymous, "lead": self.mix.sessions_lead}.get(
            person.kind, self.mix.sessions_user
        )
        # A lead who signs up does so in a later session.
        count = max(self._geometric(mean), len(person.devices), 2 if person.lead_signs_up else 1)
        starts = sorted(self._rng.uniform(-lead_in, window) for _ in range(count))
        # First session on the first browser, each other device's first session after it.
        devices = list(range(len(person.devices)))
        rest = [self._rng.randrange(len(devices)) for _ in range(count - len(devices))]
        order = [0, *self._rng.sample(devices[1:], len(devices) - 1), *rest]
        return list(zip(starts, order, strict=True))

    def _person_calls(self, window: float, lead_in: float) -> list[_Call]:
        """Every call one new person makes during the window, in their order."""
        mix, rng = self.mix, self._rng
        index = len(self.people)
        person = self._new_person()
        self.stats.population[person.kind] += 1
        calls: list[_Call] = []
        logged_in = {i for i, d in enumerate(person.devices) if d.logged_in}
        lead_identified = False
        signed_up = person.kind == "user" and not person.signs_up_in_window
        account_announced = False
        at = -float("inf")
        for number, (start, device_index) in enumerate(self._sessions(person, window, lead_in)):
            device = person.devices[device_index]
            # One session at a time: the next starts a while after the last one ended.
            at = max(start, at + rng.expovariate(1 / mix.think_time_s) + mix.think_time_s * 3)
            n_events = self._geometric(mix.events_per_session, MAX_EVENTS_PER_SESSION)
            self.stats.planned_sessions += 1
            self.stats.planned_session_events += n_events

            def call(kind: str, lead_form: bool = False, _device: int = device_index, number: int = number) -> None:
                nonlocal at
                calls.append(_Call(at, len(calls), kind, index, _device, number, _device in logged_in, lead_form))
                at += rng.expovariate(1 / mix.think_time_s)

            # When in this session the person logs in or fills in the form (None: not now).
            login_at: int | None = None
            if person.kind == "user" and device_index not in logged_in:
                login_at = rng.randrange(n_events)
            elif person.kind == "lead" and (not lead_identified or (person.lead_signs_up and number > 0)):
                login_at = rng.randrange(n_events) if device_index not in logged_in else None
            for position in range(n_events):
                if position == 0 and device_index in logged_in:
                    if device.app is None and rng.random() < mix.identify_per_logged_in_session:
                        call("identify")
                    if person.account is not None and (
                        not account_announced or rng.random() < mix.group_per_later_session
                    ):
                        call("group")
                        account_announced = True
                if position == login_at:
                    if person.kind == "lead" and not lead_identified:
                        call("identify", lead_form=True)
                        lead_identified = True
                    else:
                        if person.aliases and not signed_up:
                            call("alias")
                        logged_in.add(device_index)
                        signed_up = True
                        call("identify")
                        if person.account is not None:
                            call("group")
                            account_announced = True
                if device.app is None:
                    kind = "page" if position == 0 or rng.random() < 0.55 else "track"
                else:
                    kind = "screen" if rng.random() < 0.6 else "track"
                call(kind)
        return calls

    # --- rendering by the SDK ---------------------------------------------------------------

    def _timestamp_at(self, seconds: float) -> datetime:
        return self._start + timedelta(seconds=seconds)

    def _device_context(self, device: Device, person: Person, logged_in: bool) -> dict[str, Any]:
        if device.app is None:
            return self._web_context()
        context = self._app_context()
        if device.app == "android":
            context["device"] = {"manufacturer": "Google", "model": "Pixel 8", "type": "android"}
            context["os"] = {"name": "Android", "version": "14"}
        context["device"]["id"] = device.device_id
        if device.advertising_id:
            context["device"]["advertisingId"] = device.advertising_id
            context["device"]["adTrackingEnabled"] = True
        if logged_in and person.email:
            # The mobile SDKs repeat the identified traits in every event's context.
            context["traits"] = {"email": person.email, "name": person.name}
        return context

    def _render(self, call: _Call) -> dict[str, Any]:
        person = self.people[call.person]
        device = person.devices[call.device]
        group_id = (
            self._accounts[person.account]["group_id"] if call.kind == "group" and person.account is not None else None
        )
        self.stats.count(call, person, group_id)
        c = self._client
        common: dict[str, Any] = {
            "anonymous_id": device.anonymous_id,
            "timestamp": self._timestamp_at(call.at),
            "message_id": self._uuid(),
        }
        # An identify, alias or group names the user; other calls only once the SDK knows it.
        names_user = call.kind in ("identify", "alias", "group") and not call.lead_form
        user_id = person.user_id if call.logged_in or names_user else None
        context = self._device_context(device, person, call.logged_in or names_user)
        if call.kind == "page":
            page = context["page"]
            _, msg = c.page(
                user_id=user_id,
                name=page["title"],
                properties={"path": page["path"], "url": page["url"]},
                context=context,
                **common,
            )
        elif call.kind == "track":
            name = self._rng.choice(_TRACK_EVENTS)
            _, msg = c.track(
                user_id=user_id, event=name, properties=self._track_properties(name), context=context, **common
            )
        elif call.kind == "screen":
            _, msg = c.screen(
                user_id=user_id,
                name=self._rng.choice(_SCREENS),
                category="App",
                properties={"from": "tab_bar", "variant": "b"},
                context=context,
                **common,
            )
        elif call.kind == "identify":
            traits: dict[str, Any] = {"email": person.email}
            if user_id is not None:
                traits |= {
                    "name": person.name,
                    "plan": self._rng.choice(_PLANS),
                    "createdAt": "2025-03-14T09:26:53.589Z",
                    "logins": self._rng.randint(1, 400),
                }
            else:
                first, _, last = person.name.partition(" ")
                traits |= {"firstName": first, "lastName": last, "source": "newsletter_form"}
            _, msg = c.identify(user_id=user_id, traits=traits, context=context, **common)
        elif call.kind == "group":
            assert person.account is not None
            account = self._accounts[person.account]
            _, msg = c.group(
                user_id=user_id, group_id=account["group_id"], traits=dict(account["traits"]), context=context, **common
            )
        else:  # alias: the anonymous visitor's id becomes the new user's
            del common["anonymous_id"]
            _, msg = c.alias(previous_id=device.anonymous_id, user_id=person.user_id, context=context, **common)
        return msg  # type: ignore[no-any-return]
