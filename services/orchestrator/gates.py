"""The dispatcher's gates 1-6, as one pure function over everything they read (docs: DESIGN11.md).

`evaluate` runs, in order: opt-out, expiry and staleness, WhatsApp's window, quiet hours, budget,
spacing. The first gate that does not pass decides; a row that passes them all is sent (throughput,
gate 7, is the dispatcher's: services/orchestrator/throughput.py). Every passed gate leaves a sentence
in `Decision.passed`: it is what an operator reads in the verdict row's detail, so it names the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from services.channels.base import ChannelKind
from services.orchestrator import budget as budget_mod
from services.orchestrator import policy as policy_mod
from services.orchestrator import quiet_hours as qh
from services.orchestrator.policy import PROACTIVE, MessageClass, Policy

WHATSAPP_KINDS = frozenset({ChannelKind.TWILIO_WHATSAPP, ChannelKind.WHATSAPP_CLOUD})
OPTED_OUT = "opted_out"  # users.consent_state (services.inbound.store.ConsentState.OPTED_OUT)
OPT_OUT_CONFIRMATION = "opt_out_confirmation"
REASON_MAX = 200  # message_queue_verdicts.reason CHECK


class Gate(StrEnum):
    """The gates evaluate reports (a subset of message_queue_verdicts.gate)."""

    OPT_OUT = "opt_out"
    EXPIRY = "expiry"
    STALENESS = "staleness"
    WINDOW = "window"
    QUIET_HOURS = "quiet_hours"
    BUDGET = "budget"
    SPACING = "spacing"
    ALL = "all"  # a send: every gate passed


class Action(StrEnum):
    SEND = "send"
    DEFER = "defer"
    SUPPRESS = "suppress"
    SUPERSEDE = "supersede"
    EXPIRE = "expire"
    FAIL = "fail"


# The verdict row each action writes (message_queue_verdicts.verdict).
VERDICT = {Action.SEND: "pass", Action.DEFER: "defer", Action.SUPPRESS: "suppress",
           Action.SUPERSEDE: "supersede", Action.EXPIRE: "expire", Action.FAIL: "fail"}
# The status a row moves to (send: 'sending', under the dispatcher's lease).
STATUS = {Action.SEND: "sending", Action.DEFER: "deferred", Action.SUPPRESS: "suppressed",
          Action.SUPERSEDE: "superseded", Action.EXPIRE: "expired", Action.FAIL: "failed"}


@dataclass(frozen=True, slots=True)
class Candidate:
    """Everything the gates read about one due row: the queue row, its user, its conversation, and
    the user's budget row."""

    queue_id: int
    klass: str  # MessageClass
    reason: str  # message_queue.reason
    status: str  # queued | deferred (the gates do not look at it; kept for logs)
    created_at: datetime
    expires_at: datetime | None
    has_template: bool
    channel_kind: str  # ChannelKind of the sender channel
    consent_state: str  # users.consent_state
    time_zone: str | None  # users.time_zone
    phone: str | None  # users.phone (E.164)
    quiet_hours_enabled: bool
    last_inbound_at: datetime | None  # the conversation's last message from the user
    newer_reply_queued: bool  # another waiting reply in this conversation, queued after this one
    counters: budget_mod.Counters = field(default_factory=budget_mod.Counters)
    tenant_id: int | None = None
    user_id: int | None = None
    conversation_id: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a row now. `gate`/`reason` name the deciding gate ('all' for a send);
    `until` is when a deferred row may go (the earliest instant the failing gate passes); `passed`
    holds each passed gate's reason. `counters` are the budget row to write: charged for a send, the
    candidate's own otherwise (a send held back by throughput must write the candidate's, not these)."""

    action: Action
    gate: Gate
    reason: str
    until: datetime | None
    use_template: bool
    passed: dict[str, str]
    counters: budget_mod.Counters
    zone: str = "UTC"  # the recipient's zone the local-time gates used

    @property
    def verdict(self) -> str:
        return VERDICT[self.action]

    @property
    def status(self) -> str:
        return STATUS[self.action]


class _Stop(Exception):
    def __init__(self, action: Action, gate: Gate, reason: str, until: datetime | None = None) -> None:
        self.action, self.gate, self.reason, self.until = action, gate, reason, until


def evaluate(c: Candidate, policy: Policy, now_utc: datetime) -> Decision:
    """Gates 1-6 in order; the first that does not pass decides."""
    if now_utc.tzinfo is None:
        raise ValueError("now_utc must be aware")
    klass = MessageClass(c.klass)
    zone = policy_mod.recipient_zone(c.time_zone, c.phone, policy)
    passed: dict[str, str] = {}
    use_template = False
    try:
        passed[Gate.OPT_OUT.value] = _opt_out(c)
        passed[Gate.EXPIRY.value] = _expiry(c, now_utc)
        passed[Gate.STALENESS.value] = _staleness(c, klass)
        passed[Gate.WINDOW.value], use_template = _window(c, policy, now_utc)
        passed[Gate.QUIET_HOURS.value] = _quiet_hours(c, klass, policy, zone, now_utc)
        passed[Gate.BUDGET.value] = _budget(c, klass, policy, zone, now_utc)
        passed[Gate.SPACING.value] = _spacing(c, klass, policy, now_utc)
    except _Stop as stop:
        return Decision(stop.action, stop.gate, _clip(stop.reason), stop.until, use_template, passed,
                        c.counters, zone.key)
    counters = budget_mod.charge(c.counters, klass, now_utc, zone)
    reason = "all gates passed" + (", sending the template (outside the window)" if use_template else "")
    return Decision(Action.SEND, Gate.ALL, reason, None, use_template, passed, counters, zone.key)


def _opt_out(c: Candidate) -> str:
    if c.consent_state != OPTED_OUT:
        return "opted in" if c.consent_state == "opted_in" else f"consent {c.consent_state}, not opted out"
    if c.reason == OPT_OUT_CONFIRMATION:
        return "opted out: this is the opt-out confirmation, which still goes"
    raise _Stop(Action.SUPPRESS, Gate.OPT_OUT, "opted_out")


def _expiry(c: Candidate, now: datetime) -> str:
    if c.expires_at is None:
        return "no expiry"
    if now > c.expires_at:
        raise _Stop(Action.EXPIRE, Gate.EXPIRY, f"expired {_ago(now - c.expires_at)} ago "
                                                f"(expires_at {_utc(c.expires_at)})")
    return f"expires in {_ago(c.expires_at - now)}"


def _staleness(c: Candidate, klass: MessageClass) -> str:
    if klass is not MessageClass.REPLY:
        return f"{klass.value}: not superseded by newer replies"
    wrote_since = c.last_inbound_at is not None and c.last_inbound_at > c.created_at
    if wrote_since and c.newer_reply_queued:
        raise _Stop(Action.SUPERSEDE, Gate.STALENESS,
                    "superseded: the user wrote again after this reply was queued, and a newer reply is queued")
    if wrote_since:
        return "the user wrote again since, but no newer reply is queued"
    return "still the latest answer (no message from the user since it was queued)"


def _window(c: Candidate, policy: Policy, now: datetime) -> tuple[str, bool]:
    if c.channel_kind not in WHATSAPP_KINDS:
        return "SMS: no customer service window", False
    hours = policy.window_hours
    if c.last_inbound_at is not None and now - c.last_inbound_at < timedelta(hours=hours):
        return f"inside WhatsApp's window: last inbound {_ago(now - c.last_inbound_at)} ago", False
    since = "no inbound message" if c.last_inbound_at is None else \
        f"last inbound {_ago(now - c.last_inbound_at)} ago"
    if c.has_template:
        return f"outside WhatsApp's {hours:g}-hour window ({since}): sending the template", True
    raise _Stop(Action.FAIL, Gate.WINDOW, "window_closed")


def _quiet_hours(c: Candidate, klass: MessageClass, policy: Policy, zone: ZoneInfo, now: datetime) -> str:
    if klass is MessageClass.COMPLIANCE:
        return "compliance: never held by quiet hours"
    if not c.quiet_hours_enabled:
        return "quiet hours off for this user"
    hours = policy.quiet_hours
    if hours is None:
        return "no quiet hours for this tenant"
    local = now.astimezone(zone)
    if klass is MessageClass.REPLY and c.last_inbound_at is not None and \
            now - c.last_inbound_at <= timedelta(minutes=policy.active_user_minutes):
        return (f"reply to an active user (wrote {_ago(now - c.last_inbound_at)} ago, within "
                f"{policy.active_user_minutes:g} min): quiet hours {hours} do not apply")
    until = qh.quiet_until(hours, now, zone)
    if until is None:
        return f"local {local:%H:%M} {zone.key}, outside quiet hours {hours}"
    raise _Stop(Action.DEFER, Gate.QUIET_HOURS,
                f"local {local:%H:%M} {zone.key}, inside quiet hours {hours}: "
                f"until {until.astimezone(zone):%H:%M} local", until)


def _budget(c: Candidate, klass: MessageClass, policy: Policy, zone: ZoneInfo, now: datetime) -> str:
    if klass is MessageClass.COMPLIANCE:
        return "compliance: exempt from budgets"
    st = budget_mod.status(c.counters, policy, zone, now)
    if klass is MessageClass.REPLY:
        if st.reply_full:
            until = st.next_reply_allowed_at
            raise _Stop(Action.DEFER, Gate.BUDGET,
                        f"reply loop guard: {st.reply_used_hour} of {st.reply_limit_hourly} replies this hour "
                        f"used; until {_local(until, zone)}", until)
        return f"reply {st.reply_used_hour + 1} of {st.reply_limit_hourly} this hour (loop guard)"
    if st.day_full:
        raise _Stop(Action.DEFER, Gate.BUDGET,
                    f"daily budget used: {st.used_day} of {st.daily_limit} today ({zone.key}); "
                    f"until {_local(st.next_day_at, zone)}", st.next_day_at)
    if st.hour_full:
        raise _Stop(Action.DEFER, Gate.BUDGET,
                    f"hourly budget used: {st.used_hour} of {st.hourly_limit} this hour ({zone.key}); "
                    f"until {_local(st.next_hour_at, zone)}", st.next_hour_at)
    assert klass in PROACTIVE
    return (f"{st.used_hour + 1} of {st.hourly_limit} this hour, {st.used_day + 1} of {st.daily_limit} "
            f"today, counting this one ({zone.key})")


def _spacing(c: Candidate, klass: MessageClass, policy: Policy, now: datetime) -> str:
    if klass not in PROACTIVE:
        return f"{klass.value}: not spaced"
    last = c.counters.last_proactive_at
    if last is None:
        return "no earlier proactive message"
    until = last + timedelta(seconds=policy.min_spacing_s)
    if now < until:
        raise _Stop(Action.DEFER, Gate.SPACING,
                    f"last proactive message {_ago(now - last)} ago, minimum spacing "
                    f"{policy.min_spacing_s:g} s", until)
    return f"last proactive message {_ago(now - last)} ago (minimum {policy.min_spacing_s:g} s)"


def _ago(delta: timedelta) -> str:
    """A duration as a person reads it: 45 s, 3 min, 5 h 2 min, 2 d 3 h."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _local(moment: datetime | None, zone: ZoneInfo) -> str:
    if moment is None:
        return "?"
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} local"


def _utc(moment: datetime) -> str:
    return moment.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clip(text: str) -> str:
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"
