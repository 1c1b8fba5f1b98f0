"""Two phones, a real server, the generated Python bindings."""
import asyncio
import os
import tempfile
import uuid

import pytest
import qiaomen as q


def new_phone(url, path=None, grids=()):
    path = path or os.path.join(tempfile.mkdtemp(), "phone.db")
    return q.Phone.open(path, str(uuid.uuid4()), str(uuid.uuid4()), url, list(grids)), path


def visit(note, day="2026-11-15"):
    return q.NewVisit(
        visit_day=day, started_at_ms=1_763_164_800_000, ended_at_ms=None, gps=q.Gps(lat=34.75, lon=113.62, accuracy_m=5.0),
        outcome=q.VisitOutcome.MET, people_met=[], needs=[q.Need(category=q.NeedCategory.HEALTH_CARE, detail="降压药")],
        disputes=[], hazards=[q.Hazard(kind=q.HazardKind.ELECTRICAL, detail="电线老化")],
        publicity=[q.Publicity.ANTI_FRAUD], note=note,
        demands=[q.NewDemand(category=q.NeedCategory.HOUSING, text="屋顶漏雨", urgency=q.Urgency.URGENT)],
    )


def sync(phone, seen=None):
    class Listener(q.SyncListener):
        def on_progress(self, progress):
            if seen is not None:
                seen.append(progress)
    return asyncio.run(phone.sync(Listener()))


def household(grid):
    return q.NewHousehold(grid=grid, address="东村三组", door_number="17", phone="13812345678", gps=None,
                          tags=[q.Tag(group=q.KeyGroup.ELDERLY_ALONE, since="2024-03-01", until=None)])


def test_two_phones_record_visits_offline_and_both_see_both(server_url):
    grid = "py-" + uuid.uuid4().hex[:8]
    a, _ = new_phone(server_url, grids=[grid])
    b, _ = new_phone(server_url, grids=[grid])
    hid = a.create_household(household(grid))
    a.add_member(hid, q.NewMember(relation=q.Relation.HEAD, name="王建国", id_number="410105195001011234",
                                  birth_date="1950-01-01", phone=None, tags=[]))
    sync(a)
    sync(b)
    assert b.household_ids() == [hid]
    roster = b.roster(grid, "2026-11-15")
    assert [r.household_id for r in roster] == [hid] and roster[0].key_groups == [q.KeyGroup.ELDERLY_ALONE]

    a.record_visit(hid, visit("王：老人身体还好"))
    b.record_visit(hid, visit("李：补访"))
    assert a.pending_count() == 1 and b.not_visited(grid, "2026-11-22") == []
    progress = []
    summary = sync(a, progress)
    assert summary.progress.round_trips == 1 and summary.accepted == 1
    assert progress and progress[-1].docs_uploaded == 1
    sync(b)
    sync(a)
    ra, rb = a.household(hid), b.household(hid)
    assert ra == rb
    assert sorted(v.note for v in ra.visits) == ["李：补访", "王：老人身体还好"]
    assert len(ra.demands) == 2
    # Personal numbers stay masked in what the library hands out.
    assert ra.members[0].id_number_masked == "410***********1234"
    assert ra.phone_masked == "138****5678"
    assert a.pending_count() == 0 and b.pending_count() == 0
    assert a.acknowledged_count() == 3 and b.acknowledged_count() == 1


def test_a_conflict_is_visible_and_resolved(server_url):
    grid = "py-" + uuid.uuid4().hex[:8]
    a, _ = new_phone(server_url, grids=[grid])
    b, _ = new_phone(server_url, grids=[grid])
    hid = a.create_household(household(grid))
    sync(a)
    sync(b)
    a.update_household(hid, q.HouseholdUpdate(address=None, door_number="17A", phone=None, status=None))
    b.update_household(hid, q.HouseholdUpdate(address=None, door_number="17-1", phone=None, status=None))
    sync(a)
    sync(b)
    sync(a)
    conflicts = a.conflicts(hid)
    assert len(conflicts) == 1 and conflicts[0].path == ["door_number"]
    values = {v.value_json: v for v in conflicts[0].values}
    assert set(values) == {'"17A"', '"17-1"'}
    assert all(v.device_id and v.at_ms > 0 for v in values.values())
    a.resolve_conflict(hid, conflicts[0].path, values['"17-1"'].op)
    assert a.conflicts(hid) == []
    sync(a)
    sync(b)
    assert b.conflicts(hid) == [] and b.household(hid).door_number == "17-1"


def test_a_refused_change_is_reported_and_the_phone_keeps_working(server_url):
    grid = "py-" + uuid.uuid4().hex[:8]
    first, path = new_phone(server_url, grids=[grid])
    hid = first.create_household(household(grid))
    sync(first)
    first.record_visit(hid, visit("made before re-enrollment"))
    del first
    # The same store reopened as another device: its unsynced edit is not this device's to send.
    second, _ = new_phone(server_url, path=path, grids=[grid])
    summary = sync(second)
    assert summary.rejected == 1
    refused = second.rejected_changes()
    assert [(r.household_id, r.code) for r in refused] == [(hid, "forbidden")]
    assert second.household(hid).visits == []
    second.record_visit(hid, visit("recorded again"))
    assert sync(second).rejected == 0 and second.pending_count() == 0


def test_errors_arrive_as_the_documented_exceptions(server_url):
    phone, _ = new_phone(server_url)
    with pytest.raises(q.QiaomenError.InvalidInput):
        phone.household("not-a-uuid")
    with pytest.raises(q.QiaomenError.NotFound):
        phone.household(str(uuid.uuid4()))
    hid = phone.create_household(household("g"))
    with pytest.raises(q.QiaomenError.InvalidInput):
        phone.record_visit(hid, visit("not a visit day", day="2026-11-16"))
    with pytest.raises(q.QiaomenError.InvalidInput):
        q.Phone.open(os.path.join(tempfile.mkdtemp(), "p.db"), "x", "y", server_url, [])
    offline, _ = new_phone("http://127.0.0.1:9")
    offline.create_household(household("g"))
    with pytest.raises(q.QiaomenError.Network):
        sync(offline)
    assert offline.pending_count() == 1


def test_a_sync_can_be_cancelled_and_the_phone_stays_usable(server_url):
    import socket
    import threading
    # A server that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(8)], daemon=True).start()
    phone, path = new_phone(f"http://127.0.0.1:{silent.getsockname()[1]}")
    hid = phone.create_household(household("g"))

    async def cancel_it():
        task = asyncio.ensure_future(phone.sync(None))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(asyncio.wait_for(cancel_it(), timeout=20))
    # The store is free again, nothing was lost, and a real sync goes through.
    assert phone.pending_count() == 1
    again = q.Phone.open(path, str(uuid.uuid4()), str(uuid.uuid4()), server_url, [])
    assert again.household(hid).door_number == "17"
    silent.close()
