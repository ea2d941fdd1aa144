"""The queue id a status callback echoes back (Twilio `?q=`, Meta `biz_opaque_callback_data`) is read
strictly: anything but a positive id in range is no id at all, never an exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.channels import base


@given(st.text())
def test_any_text_is_an_id_in_range_or_none(text: str) -> None:
    for prefix in ("", "q:"):
        value = base.queue_id_from(text, prefix)
        assert value is None or 0 < value <= base.QUEUE_ID_MAX


def test_the_forms_we_send_are_read_back() -> None:
    assert base.queue_id_from("123") == 123
    assert base.queue_id_from("q:123", "q:") == 123
    assert base.queue_id_from("123", "q:") is None  # Meta's echo without our prefix is somebody else's
    assert base.queue_id_from("0") is None and base.queue_id_from("-5") is None
    assert base.queue_id_from("١٢٣") is None  # Arabic-Indic digits pass str.isdigit(), not our parser
    assert base.queue_id_from(str(base.QUEUE_ID_MAX + 1)) is None
