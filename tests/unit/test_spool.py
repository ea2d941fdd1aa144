"""The spool on its own: what it writes, in which order it replays, what it does with leftovers."""

from __future__ import annotations

import asyncio
import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db import errors as db_errors
from services.channels import twilio
from services.channels.base import ChannelKind, InboundMessage
from services.inbound import spool as spool_mod
from services.inbound.directory import Channel
from tests import support

CHANNEL = Channel(7, 3, ChannelKind.TWILIO_SMS, "+14155550100", support.ACCOUNT_SID, None,
                  {"auth_token": support.AUTH_TOKEN})


def _msg(sid: str, from_: str = "+14155550101", body: str = "hi") -> InboundMessage:
    return twilio.parse_inbound(twilio.form_fields(
        "&".join(f"{k}={v}" for k, v in support.sms_pairs(body, sid, from_=from_)).replace("+", "%2B")))


def test_an_entry_round_trips_without_the_channels_secrets():
    msg = _msg("SM" + "1" * 32)
    msg = InboundMessage(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__},
                            "sent_at": datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
                            "details": {"reply": {"id": 1, "n": [1, "x"]}}})
    line = spool_mod.encode(CHANNEL, msg)
    assert support.AUTH_TOKEN.encode() not in line
    entry = spool_mod.decode(line)
    assert entry.msg == msg
    assert entry.channel == Channel(7, 3, ChannelKind.TWILIO_SMS, "+14155550100", support.ACCOUNT_SID, None, {})


async def _replay_all(spool: spool_mod.Spool, replay: spool_mod.Replay, count: int) -> None:
    task = asyncio.create_task(spool.run(replay))
    try:
        while spool.replayed + spool.rejected < count or spool.pending:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_replay_keeps_each_senders_order_and_never_runs_one_sender_twice_at_once(tmp_path):
    spool = spool_mod.Spool(tmp_path, 1 << 20)
    senders = [f"+1415555020{i}" for i in range(3)]
    sent = [(senders[n % 3], f"SM{n:032x}") for n in range(30)]
    for from_, sid in sent:
        await spool.append(CHANNEL, _msg(sid, from_))
    [path] = tmp_path.glob("*.jsonl")
    assert path.stat().st_size > 0 and spool.pending

    stored: list[tuple[str, str]] = []
    in_flight: set[str] = set()

    async def replay(channel: Channel, msg: InboundMessage) -> None:
        assert msg.sender.phone not in in_flight
        in_flight.add(msg.sender.phone or "")
        await asyncio.sleep(0.001)
        in_flight.discard(msg.sender.phone or "")
        stored.append((msg.sender.phone or "", msg.provider_message_id))

    await _replay_all(spool, replay, len(sent))
    for s in senders:
        assert [sid for f, sid in stored if f == s] == [sid for f, sid in sent if f == s]
    assert not path.exists()  # replayed to its end: removed, the next append starts a new file


async def test_an_unreachable_database_is_retried_and_a_refused_line_is_set_aside(tmp_path):
    spool = spool_mod.Spool(tmp_path, 1 << 20)
    for n in range(3):
        await spool.append(CHANNEL, _msg(f"SM{n:032x}", f"+1415555030{n}"))
    down = {"left": 3}
    stored: list[str] = []

    async def replay(channel: Channel, msg: InboundMessage) -> None:
        if down["left"]:
            down["left"] -= 1
            raise db_errors.Unavailable("ConnectionRefusedError")
        if msg.provider_message_id.endswith("1"):
            raise ValueError("refused by a constraint")
        stored.append(msg.provider_message_id)

    await _replay_all(spool, replay, 3)
    assert stored == [f"SM{0:032x}", f"SM{2:032x}"]
    [rejected] = (tmp_path / "rejected").glob("*.jsonl")
    assert spool_mod.decode(rejected.read_bytes().splitlines()[0]).msg.provider_message_id == f"SM{1:032x}"


async def test_a_full_spool_refuses_as_unavailable(tmp_path):
    line = len(spool_mod.encode(CHANNEL, _msg("SM" + "0" * 32)))
    spool = spool_mod.Spool(tmp_path, line * 2)
    await spool.append(CHANNEL, _msg("SM" + "0" * 32))
    await spool.append(CHANNEL, _msg("SM" + "1" * 32))
    with pytest.raises(db_errors.Unavailable):
        await spool.append(CHANNEL, _msg("SM" + "2" * 32))


def _write_orphan(directory: Path, name: str, sids: list[str], torn: bool = False) -> Path:
    path = directory / name
    data = b"".join(spool_mod.encode(CHANNEL, _msg(sid)) for sid in sids)
    path.write_bytes(data + (b'{"channel": {"id"' if torn else b""))
    return path


async def test_a_dead_processs_file_is_adopted_and_a_live_ones_is_left_alone(tmp_path):
    dead = _write_orphan(tmp_path, "111-dead.jsonl", ["SM" + "a" * 32, "SM" + "b" * 32], torn=True)
    live = _write_orphan(tmp_path, "222-live.jsonl", ["SM" + "c" * 32])
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a living process holds
    try:
        spool = spool_mod.Spool(tmp_path, 1 << 20)
        assert spool.adopt_orphans() == 1
        other = spool_mod.Spool(tmp_path, 1 << 20)
        assert other.adopt_orphans() == 0  # the first adopter holds the dead one's lock now
        await spool.append(CHANNEL, _msg("SM" + "d" * 32))  # newer than the orphan: replayed after it
        stored: list[str] = []

        async def replay(channel: Channel, msg: InboundMessage) -> None:
            stored.append(msg.provider_message_id)

        await _replay_all(spool, replay, 3)
        assert stored == ["SM" + "a" * 32, "SM" + "b" * 32, "SM" + "d" * 32]  # the torn line skipped
        assert not dead.exists() and live.exists()
        spool.close()
        other.close()
    finally:
        os.close(held)
