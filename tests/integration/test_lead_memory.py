"""Lead memory that remembers (issue 12 §4): a booking with a requested time survives HELP, thanks, a
question and "ok"; each message keeps its own intent."""

from __future__ import annotations

from agents.when import RequestedTime
from tests.integration.test_agents import drain, say


async def test_booking_and_its_time_survive_help_thanks_question_and_ok(client, db):
    script = ["Hi, I'd like to book a cleaning on Friday morning", "HELP", "thanks",
              "Do you take insurance?", "ok"]
    for n, text in enumerate(script):
        await say(client, text, n)
        await drain(client)
    lead = await db.fetchrow("SELECT * FROM lead_memory")
    assert lead["intent"] == "booking"
    assert lead["wants"] == "a cleaning"
    rt = RequestedTime.from_json(lead["requested_time"])
    assert rt.precision == "part_of_day" and rt.start.weekday() == 4 and rt.start.hour == 9
    # +1 415: the number's zone, since neither the user nor the tenant sets one.
    assert rt.zone == "America/Los_Angeles"
    first = await db.fetchval("SELECT min(id) FROM messages WHERE direction = 'inbound'")
    assert lead["requested_time"]["message_id"] == first == lead["intent_message_id"]
    assert lead["open_question"] == "Do you take insurance?"
    summary = lead["ai_summary"]
    assert "a cleaning" in summary and "Friday" in summary and "morning" in summary, summary
    assert "Latest: \u201cok\u201d" in summary
    intents = [r["intent"] for r in await db.fetch(
        "SELECT intent FROM messages WHERE direction = 'inbound' ORDER BY id")]
    assert intents[0] == "booking" and intents[1] == "help" and intents[3] == "question"
    assert all(i is not None for i in intents)
    # History records the intent only when the kept intent changes: once, at the insert.
    changed = await db.fetch("SELECT changes FROM lead_actions WHERE changes ? 'intent'")
    assert [c["changes"]["intent"]["to"] for c in changed] == ["booking"]


async def test_not_interested_after_a_booking_replaces_it(client, db):
    await say(client, "Can I book a cleaning tomorrow at 3pm?", 0)
    await drain(client)
    await say(client, "Actually I'm not interested anymore, thanks", 1)
    await drain(client)
    lead = await db.fetchrow("SELECT intent, open_question, wants FROM lead_memory")
    assert lead["intent"] == "not_interested"
    assert lead["open_question"] is None


async def test_requested_time_is_read_in_the_users_own_zone_when_set(client, db):
    await say(client, "hello", 0)
    await drain(client)
    await db.execute("UPDATE users SET time_zone = 'Europe/Paris'")
    await say(client, "Can I book a cleaning tomorrow at 3pm?", 1)
    await drain(client)
    rt = RequestedTime.from_json(await db.fetchval("SELECT requested_time FROM lead_memory"))
    assert rt.zone == "Europe/Paris" and rt.start.hour == 15 and rt.precision == "time"
