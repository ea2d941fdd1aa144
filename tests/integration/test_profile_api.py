"""The business profile through the operator API: partial PATCH, null resets, refused values naming
their field, the FAQ replaced and read, tenants kept apart, load_many in one query."""

from __future__ import annotations

from typing import Any

import pytest

from services import profile
from tests.integration.test_messages_api import AUTH, get, patch


@pytest.fixture
async def api(make_client):
    return await make_client()


async def put(client: Any, path: str, body: object, **params: str) -> tuple[int, Any]:
    resp = await client.put(path, json=body, headers=AUTH, params=params)
    return resp.status, await resp.json()


async def test_a_tenant_without_a_profile_has_the_defaults(api):
    status, view = await get(api, "/api/tenant")
    assert status == 200, view
    assert view["profile"]["business_name"] == view["name"]
    assert (view["profile"]["tone"], view["profile"]["language"], view["profile"]["followup_speed"]) == (
        "Friendly", "en", "Instant")
    assert view["profile"]["ai_personalized_reply"] is True and view["faq"] == []


async def test_patch_changes_only_the_named_fields_and_null_resets(api):
    status, view = await patch(api, "/api/tenant", {"profile": {
        "business_name": "Bright Smile", "tone": "Formal", "booking_link": "https://example.com/book",
        "handoff_message": "Someone at {{ business_name }} will call you."}})
    assert status == 200, view
    status, view = await patch(api, "/api/tenant", {"profile": {"language": "fr", "tone": None}})
    assert status == 200, view
    p = view["profile"]
    assert (p["business_name"], p["tone"], p["language"], p["booking_link"]) == (
        "Bright Smile", "Friendly", "fr", "https://example.com/book")


@pytest.mark.parametrize("body, field", [
    ({"tone": "Grumpy"}, "profile.tone"),
    ({"language": "de"}, "profile.language"),
    ({"followup_speed": "Tomorrow"}, "profile.followup_speed"),
    ({"booking_link": "ftp://example.com"}, "profile.booking_link"),
    ({"booking_link": "not a url"}, "profile.booking_link"),
    ({"handoff_message": "Hi {{ nobody }}"}, "profile.handoff_message"),
    ({"tagline": "{{ ''.__class__.__mro__ }}"}, "profile.tagline"),
    ({"tagline": "{% if %}"}, "profile.tagline"),
    ({"colour": "red"}, "profile.colour"),
])
async def test_a_bad_profile_value_is_a_400_naming_the_field(api, body, field):
    status, answer = await patch(api, "/api/tenant", {"profile": body})
    assert status == 400 and answer["field"] == field, answer


async def test_the_faq_is_replaced_and_read_per_tenant(api, db):
    other = await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ('other', 'Other', 'Help') "
                              "RETURNING id")
    faq = [{"question": "Do you take walk-ins?", "answer": "Yes, at {{ business_name }}.", "keywords": ["walk-in"]},
           {"question": "Parking?", "answer": "Free parking behind the clinic."}]
    status, stored = await put(api, "/api/tenant/faq", faq)
    assert status == 200, stored
    assert [e["question"] for e in stored] == ["Do you take walk-ins?", "Parking?"]
    assert stored[1]["keywords"] == []
    status, read = await get(api, "/api/tenant/faq")
    assert read == stored
    status, theirs = await get(api, "/api/tenant/faq", tenant_id=str(other))
    assert status == 200 and theirs == []
    status, answer = await put(api, "/api/tenant/faq", [{"question": "Q", "answer": "{{ price }}"}])
    assert status == 400 and answer["field"] == "faq[0].answer", answer
    status, read = await get(api, "/api/tenant/faq")
    assert read == stored


async def test_load_many_reads_several_tenants_in_one_query(api, db):
    ids = [await db.fetchval("INSERT INTO tenants (slug, name, help_text) VALUES ($1, $2, 'Help') RETURNING id",
                             f"t{i}", f"T{i}") for i in range(3)]
    await profile.set_profile(db, ids[0], {"tone": "Energetic"})
    await profile.replace_faq(db, ids[1], [profile.NewFaqEntry("Q?", "A.", ("k",))])
    found = await profile.load_many(db, ids)
    assert found[ids[0]].tone is profile.Tone.ENERGETIC and found[ids[2]].business_name == "T2"
    assert found[ids[1]].faq[0].keywords == ("k",)
