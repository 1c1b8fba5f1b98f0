"""Enrolled phones, a real server, the generated Python bindings."""
import asyncio
import gc
import os
import socket
import tempfile
import threading
import uuid

import pytest
import qiaomen as q


def temp_path():
    return os.path.join(tempfile.mkdtemp(), "phone.db")


def enroll(url, code, path=None):
    path = path or temp_path()
    return asyncio.run(q.enroll(path, url, code)), path


def worker(org, grid):
    phone, _ = enroll(org.url, org.code(grid))
    return phone


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


def test_two_phones_record_visits_offline_and_both_see_both(org):
    grid = org.grid()
    a, b = worker(org, grid), worker(org, grid)
    assert a.user_id() != b.user_id() and a.device_id() != b.device_id()
    hid = a.create_household(household(grid))
    a.add_member(hid, q.NewMember(relation=q.Relation.HEAD, name="王建国", id_number="410108195001011234",
                                  birth_date="1950-01-01", phone=None, tags=[]))
    sync(a)
    sync(b)
    assert b.household_ids() == [hid] and b.grids() == [grid]
    roster = b.roster(grid, "2026-11-15")
    assert [r.household_id for r in roster] == [hid] and roster[0].key_groups == [q.KeyGroup.ELDERLY_ALONE]
    # The visit-day coverage, offline: due (a key group), not visited; the catch-up deadline
    # is five days after the visit day (any day of the cycle names it).
    (due,) = b.coverage(grid, "2026-11-17")
    assert (due.household_id, due.attempts, due.catch_up_by) == (hid, 0, "2026-11-20")
    assert due.status in (q.CoverageStatus.PENDING, q.CoverageStatus.MISSED) and due.reason is None

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
    (due,) = a.coverage(grid, "2026-11-15")
    assert (due.status, due.attempts) == (q.CoverageStatus.VISITED, 2)
    assert len(ra.demands) == 2
    # Personal numbers stay masked in what the library hands out.
    assert ra.members[0].id_number_masked == "410***********1234"
    assert ra.phone_masked == "138****5678"
    assert a.pending_count() == 0 and b.pending_count() == 0
    assert a.acknowledged_count() == 3 and b.acknowledged_count() == 1


def test_a_conflict_is_visible_and_resolved(org):
    grid = org.grid()
    a, b = worker(org, grid), worker(org, grid)
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
    assert {v.device_id for v in values.values()} == {a.device_id(), b.device_id()}
    assert all(v.at_ms > 0 for v in values.values())
    a.resolve_conflict(hid, conflicts[0].path, values['"17-1"'].op)
    assert a.conflicts(hid) == []
    sync(a)
    sync(b)
    assert b.conflicts(hid) == [] and b.household(hid).door_number == "17-1"


def test_an_edit_the_server_would_refuse_is_refused_at_once_and_the_phone_keeps_working(org):
    grid = org.grid()
    phone = worker(org, grid)
    hid = phone.create_household(household(grid))
    sync(phone)
    # Marking a household merged is a supervisor's decision: with the rights its sync brought,
    # the phone refuses it at once (as the server would), naming what, and stores nothing.
    with pytest.raises(q.QiaomenError.NotAllowed) as refused:
        phone.update_household(hid, q.HouseholdUpdate(address=None, door_number=None, phone=None,
                                                      status=q.HouseholdStatus.MERGED))
    assert (refused.value.what, refused.value.code) == ("status", "not_allowed")
    assert phone.pending_count() == 0 and phone.rejected_changes() == []
    assert phone.household(hid).status == q.HouseholdStatus.ACTIVE
    # A household in a grid that is not the worker's: refused too.
    with pytest.raises(q.QiaomenError.NotAllowed) as refused:
        phone.create_household(household(org.grid()))
    assert (refused.value.what, refused.value.code) == ("household", "out_of_scope")
    phone.record_visit(hid, visit("recorded"))
    assert sync(phone).rejected == 0 and phone.pending_count() == 0


def test_enrollment_errors_and_other_errors_arrive_as_the_documented_exceptions(org):
    grid = org.grid()
    code = org.code(grid)
    # Offline: the code is not spent, and enrolling later works.
    path = temp_path()
    with pytest.raises(q.QiaomenError.Network) as offline:
        asyncio.run(q.enroll(path, "http://127.0.0.1:9", code))
    # It says how: nothing listens there.
    assert offline.value.failure == "unreachable"
    phone, _ = enroll(org.url, code, path)
    # The app may tune how syncs treat a weak link; a sync with it still works.
    phone.set_sync_policy(q.SyncPolicy(attempts=3, stall_seconds=10.0, give_up_after_seconds=30.0, upload_piece_bytes=16 * 1024))
    assert sync(phone).rejected == 0
    # The same code again (another phone): refused.
    with pytest.raises(q.QiaomenError.Unauthorized):
        enroll(org.url, code)
    with pytest.raises(q.QiaomenError.Unauthorized):
        enroll(org.url, "AAAA-BBBB-CCCC")
    with pytest.raises(q.QiaomenError.Unauthorized):
        q.Phone.open(temp_path())  # never enrolled
    with pytest.raises(q.QiaomenError.InvalidInput):
        phone.household("not-a-uuid")
    with pytest.raises(q.QiaomenError.NotFound):
        phone.household(str(uuid.uuid4()))
    hid = phone.create_household(household(grid))
    with pytest.raises(q.QiaomenError.InvalidInput):
        phone.record_visit(hid, visit("not a visit day", day="2026-11-16"))
    # A value the server would refuse is refused on the phone, naming the field (SYNC-v1 §13.8).
    with pytest.raises(q.QiaomenError.InvalidInput) as refused:
        phone.add_member(hid, q.NewMember(relation=q.Relation.HEAD, name="王建国", id_number="12345",
                                          birth_date=None, phone=None, tags=[]))
    assert (refused.value.invalid_field, refused.value.rule) == ("member_id_number", "id_format")
    assert "12345" not in str(refused.value)
    with pytest.raises(q.QiaomenError.InvalidInput) as refused:
        phone.record_visit(hid, visit("字" * 5001))
    assert (refused.value.invalid_field, refused.value.rule) == ("note", "too_long")
    assert phone.household(hid).members == [] and phone.household(hid).visits == []
    # Reopened after a restart: the same user and device.
    again = q.Phone.open(path)
    assert again.device_id() == phone.device_id()


def test_a_revoked_phone_is_wiped_on_its_next_sync(org):
    grid = org.grid()
    phone = worker(org, grid)
    hid = phone.create_household(household(grid))
    sync(phone)
    phone.record_visit(hid, visit("offline, then the phone is lost"))
    org.admin("revoke", "--device", phone.device_id())
    with pytest.raises(q.QiaomenError.Revoked):
        sync(phone)
    assert phone.household_ids() == [] and phone.pending_count() == 0


def device_line(org, device_id):
    """The device's line in `admin devices`: id, login, status, last sync, pending."""
    return next(l for l in org.admin("devices").splitlines() if l.startswith(device_id)).split("\t")


def test_a_retired_phone_uploads_its_visits_then_is_wiped(org):
    grid = org.grid()
    phone, colleague = worker(org, grid), worker(org, grid)
    hid = phone.create_household(household(grid))
    sync(phone)
    status, _last_sync, pending = device_line(org, phone.device_id())[2:]
    assert (status, pending) == ("active", "0")
    phone.record_visit(hid, visit("recorded before the handover"))
    # A revoke would lose nothing known to the server, but a retire uploads first.
    org.admin("retire", "--device", phone.device_id())
    assert device_line(org, phone.device_id())[2] == "retiring"
    with pytest.raises(q.QiaomenError.Retired) as e:
        sync(phone)
    assert e.value.wiped
    assert phone.household_ids() == [] and phone.pending_count() == 0
    assert device_line(org, phone.device_id())[2] == "retired"
    sync(colleague)
    assert [v.note for v in colleague.household(hid).visits] == ["recorded before the handover"]


class Gate:
    """A TCP proxy to the server that can stop answering (connections accepted, never served)."""

    def __init__(self, target_port):
        self.open = True
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self.serve, args=(target_port,), daemon=True).start()

    def serve(self, target_port):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                self.held.append(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_sync_can_be_cancelled_and_the_phone_stays_usable(org):
    grid = org.grid()
    gate = Gate(int(org.url.rsplit(":", 1)[1]))
    phone, path = enroll(f"http://127.0.0.1:{gate.port}", org.code(grid))
    hid = phone.create_household(household(grid))
    gate.open = False  # the server stops answering

    async def cancel_it():
        task = asyncio.ensure_future(phone.sync(None))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(asyncio.wait_for(cancel_it(), timeout=20))
    # The store is free again and nothing was lost.
    assert phone.pending_count() == 1
    again = q.Phone.open(path)
    assert again.household(hid).door_number == "17"
    gate.open = True
    assert sync(again).accepted == 1 and again.pending_count() == 0
    gate.sock.close()


def test_a_visit_returned_by_a_supervisor_is_a_task_until_fixed(org):
    grid = org.grid()
    phone = worker(org, grid)
    hid = phone.create_household(household(grid))
    visit_id = phone.record_visit(hid, visit("第一次走访"))
    sync(phone)
    boss = org.supervisor_session("py-village")
    view = org.request("GET", f"/api/v1/households/{hid}", boss)
    org.request("POST", f"/api/v1/households/{hid}/reviews", boss,
                {"visit_id": visit_id, "decision": "Returned", "comment": "请补充用药情况",
                 "heads": view["heads"]})
    assert phone.fix_tasks() == []
    sync(phone)
    tasks = phone.fix_tasks()
    assert [(t.household_id, t.visit_id, t.comment) for t in tasks] == [(hid, visit_id, "请补充用药情况")]
    phone.update_visit_note(hid, visit_id, "第一次走访：已按时服药")
    assert phone.fix_tasks() == []
    assert sync(phone).rejected == 0
    assert org.request("GET", f"/api/v1/households/{hid}", boss)["open_tasks"] == []


def test_the_app_names_itself_and_a_supervisor_sees_the_phone_and_what_it_runs(org):
    grid = org.grid()
    phone = worker(org, grid)
    phone.set_app("pytest-app/1.2.3")
    phone.create_household(household(grid))
    sync(phone)
    boss = org.supervisor_session("py-village")
    rows = org.request("GET", "/api/v1/phones?unit=py-village", boss)
    mine = [r for r in rows if r["device"] == phone.device_id()]
    assert len(mine) == 1, rows
    assert mine[0]["agent"].startswith("qiaomen/") and mine[0]["agent"].endswith(" pytest-app/1.2.3")
    assert mine[0]["pending"] == 0 and mine[0]["days_since_sync"] == 0


SECRETS = ("欧阳秀英", "11010519491231002X", "13912345678")


def store_bytes(path):
    """The store file and its journals, as a thief would copy them."""
    import glob
    return b"".join(open(p, "rb").read() for p in sorted(glob.glob(path + "*")))


def add_resident(phone, grid):
    hid = phone.create_household(household(grid))
    phone.add_member(hid, q.NewMember(relation=q.Relation.HEAD, name=SECRETS[0], id_number=SECRETS[1],
                                      birth_date=None, phone=SECRETS[2], tags=[]))
    return hid


def test_an_encrypted_store_hides_residents_and_opens_only_with_its_key(org):
    grid = org.grid()
    key = os.urandom(32)
    path = temp_path()
    phone = asyncio.run(q.enroll(path, org.url, org.code(grid), key))
    hid = add_resident(phone, grid)
    phone.record_visit(hid, visit("老人独居，血压偏高"))
    sync(phone)
    raw = store_bytes(path)
    assert raw and not [s for s in SECRETS if s.encode() in raw]
    del phone
    gc.collect()

    before = store_bytes(path)
    with pytest.raises(q.QiaomenError.WrongKey):
        q.Phone.open(path, os.urandom(32))
    with pytest.raises(q.QiaomenError.InvalidInput):
        q.Phone.open(path, b"sixteen byte key")
    with pytest.raises(q.QiaomenError.Storage):
        q.Phone.open(path)  # encrypted, opened without its key
    assert store_bytes(path) == before, "a wrong key leaves the file as it was"

    again = q.Phone.open(path, key)
    assert [m.name for m in again.household(hid).members] == [SECRETS[0]]
    assert again.pending_count() == 0


def test_a_plaintext_store_is_encrypted_when_first_opened_with_a_key(org):
    grid = org.grid()
    phone, path = enroll(org.url, org.code(grid))
    hid = add_resident(phone, grid)
    assert [s for s in SECRETS if s.encode() in store_bytes(path)], "the scan sees plaintext"
    pending = phone.pending_count()
    del phone
    gc.collect()

    key = os.urandom(32)
    encrypted = q.Phone.open(path, key)
    assert not [s for s in SECRETS if s.encode() in store_bytes(path)]
    assert encrypted.pending_count() == pending
    sync(encrypted)
    assert encrypted.pending_count() == 0 and encrypted.household(hid).members[0].name == SECRETS[0]


def jpeg(n, seed=0):
    """A JPEG's signature and n bytes after it: the library judges the format by the bytes."""
    return bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes((i * 31 + seed) % 256 for i in range(n))


def test_a_photo_is_attached_offline_sent_after_its_record_and_fetched_by_another_phone(org):
    grid = org.grid()
    a, b = worker(org, grid), worker(org, grid)
    outsider = worker(org, org.grid())
    hid = a.create_household(household(grid))
    vid = a.record_visit(hid, visit("电线下垂，已拍照"))
    taken = jpeg(300_000, 1)
    photo = a.attach_photo(hid, q.PhotoSubject.HAZARD(visit_id=vid, item=0), taken, "电线下垂", 1_763_164_900_000)
    assert (photo.state, photo.size, photo.media_type) == ("pending", len(taken), "image/jpeg")
    assert a.pending_photo_count() == 1
    # What the server would refuse is refused at once, with the field and the rule.
    with pytest.raises(q.QiaomenError.InvalidInput) as e:
        a.attach_photo(hid, q.PhotoSubject.VISIT(visit_id=vid), b"GIF89a not a photo", "", 0)
    assert (e.value.invalid_field, e.value.rule) == ("photo", "media_type")
    with pytest.raises(q.QiaomenError.InvalidInput) as e:
        a.attach_photo(hid, q.PhotoSubject.VISIT(visit_id=vid), jpeg(3 * 1024 * 1024), "", 0)
    assert (e.value.invalid_field, e.value.rule) == ("photo", "too_large")
    # From a file, as the camera leaves it.
    path = os.path.join(tempfile.mkdtemp(), "door.jpg")
    with open(path, "wb") as f:
        f.write(jpeg(20_000, 2))
    door = a.attach_photo_file(hid, q.PhotoSubject.HOUSEHOLD(), path, "门牌", 0)
    summary = sync(a)
    assert summary.accepted >= 4 and summary.photos_sent == 2 and summary.photos_waiting == 0
    assert a.pending_count() == 0 and a.pending_photo_count() == 0
    assert {p.state for p in a.photos(hid)} == {"sent"}
    # Another phone of the grid gets the references with the records, the bytes only when asked.
    sync(b)
    by_hash = {p.hash: p for p in b.photos(hid)}
    assert set(by_hash) == {photo.hash, door.hash} and by_hash[photo.hash].state == "remote"
    assert by_hash[photo.hash].subject == q.PhotoSubject.HAZARD(visit_id=vid, item=0)
    assert asyncio.run(b.photo_bytes(hid, photo.hash)) == taken
    assert {p.hash: p.state for p in b.photos(hid)}[photo.hash] == "fetched"
    # A phone of another grid cannot fetch it.
    with pytest.raises(q.QiaomenError.NotFound):
        asyncio.run(outsider.photo_bytes(hid, photo.hash))


def test_a_task_report_with_photos_is_kept_offline_and_its_photos_go_after_it(org):
    grid = org.grid()
    a = worker(org, grid)
    centre = org.supervisor_session("py-town", role="town_supervisor")
    created = org.request("POST", "/api/v1/tasks", centre, {"title": "防诈宣传", "items": ["张贴防诈骗海报"], "units": [grid]})
    sync(a)
    [lst] = [l for l in a.task_lists() if l.id == created["id"]]
    # What the server would refuse is refused at once, and nothing is kept.
    with pytest.raises(q.QiaomenError.InvalidInput) as e:
        a.complete_task_with_photos(lst.id, 0, grid, "", [q.NewTaskPhoto(bytes=b"GIF89a", caption="", taken_at_ms=0)])
    assert (e.value.invalid_field, e.value.rule) == ("photo", "media_type")
    poster = jpeg(50_000, 3)
    a.complete_task_with_photos(lst.id, 0, grid, "村委会门口已张贴",
                                [q.NewTaskPhoto(bytes=poster, caption="海报", taken_at_ms=1_763_164_900_000)])
    [done] = [l for l in a.task_lists() if l.id == lst.id][0].done
    assert (done.on_server, [(p.caption, p.state) for p in done.photos]) == (False, [("海报", "pending")])
    summary = sync(a)
    assert (summary.tasks_sent, summary.photos_sent, summary.photos_waiting) == (1, 1, 0)
    [done] = [l for l in a.task_lists() if l.id == lst.id][0].done
    assert done.on_server and done.photos[0].state == "sent"
    assert a.held_photo_bytes(done.photos[0].hash) == poster
    seen = org.request("GET", f"/api/v1/tasks/{lst.id}", centre)
    assert [p["hash"] for p in seen["done"][0]["photos"]] == [done.photos[0].hash]


def test_a_hazard_found_on_a_visit_is_followed_up_rectified_and_checked_through_the_bindings(org):
    grid = org.grid()
    phone = worker(org, grid)
    centre, _ = enroll(org.url, org.code("py-village", role="village_supervisor"))
    hid = phone.create_household(household(grid))
    sync(phone)
    vid = phone.record_visit(hid, visit("电线老化"))
    hazard = q.CaseKindItem.HAZARD(kind=q.HazardKind.ELECTRICAL)
    # A line the visit does not hold is refused at once, nothing stored.
    pending = phone.pending_count()
    with pytest.raises(q.QiaomenError.InvalidInput):
        phone.raise_case(hid, q.NewCaseInput(kind=hazard, visit_id=vid, item=5, detail="电线老化",
                                             parties="", due=None))
    assert phone.pending_count() == pending
    case = phone.raise_case(hid, q.NewCaseInput(kind=hazard, visit_id=vid, item=0,
                                                detail="厨房电线老化，有起火风险", parties="厨房", due="2026-12-31"))
    assert case.state == q.CaseState.OPEN and case.kind == hazard and case.due == "2026-12-31"
    follow = phone.follow_ups(grid)
    assert [(f.door_number, f.case_item.case_id) for f in follow] == [("17", case.case_id)]

    def step(p, action, comment=""):
        p.case_step(hid, case.case_id, q.CaseStepInput(action=action, comment=comment, assignee_id=None,
                                                        due=None, visit_id=None))

    step(phone, q.CaseAction.START)
    # Resolving needs its result; checking is a supervisor's: both refused at once.
    with pytest.raises(q.QiaomenError.InvalidInput):
        step(phone, q.CaseAction.RESOLVE)
    step(phone, q.CaseAction.RESOLVE, "已更换电线")
    with pytest.raises(q.QiaomenError.NotAllowed) as refused:
        step(phone, q.CaseAction.CHECK)
    assert (refused.value.what, refused.value.code) == ("case_step", "not_allowed")
    assert sync(phone).rejected == 0 and phone.follow_ups(grid) == []

    sync(centre)
    step(centre, q.CaseAction.CHECK, "验收合格")
    assert sync(centre).rejected == 0
    sync(phone)
    [done] = phone.cases(hid)
    assert done.state == q.CaseState.CHECKED
    assert [e.action for e in done.history] == [q.CaseAction.START, q.CaseAction.RESOLVE, q.CaseAction.CHECK]
    assert done.history[1].comment == "已更换电线"


def test_an_event_and_a_work_log_written_offline_go_with_the_visit_in_one_sync(org):
    grid = org.grid()
    phone = worker(org, grid)
    hid = phone.create_household(household(grid))
    sync(phone)  # the phone learns what the server takes
    phone.record_visit(hid, visit("一切正常"))
    shot = jpeg(2000, seed=7)
    phone_hash = __import__("hashlib").sha256(shot).hexdigest()
    event = phone.record_event(q.NewEventInput(grid=grid, kind=q.EventKind.FIRE, day=None, place="菜市场东口",
                                               latitude=34.75, longitude=113.62, detail="商铺门口堆放液化气罐",
                                               photos=[q.NewTaskPhoto(bytes=shot, caption="液化气罐",
                                                                      taken_at_ms=1_763_164_900_000)]))
    assert event.photo_hashes == [phone_hash]
    assert event.state == "pending" and event.event_kind == q.EventKind.FIRE and event.label == "事件 · 消防安全"
    log = phone.record_work_log(q.NewWorkLogInput(grid=grid, day=None, detail="走访 12 户，排查隐患 2 处"))
    # Refused at once by the server's own rules, nothing kept: the field is named.
    with pytest.raises(q.QiaomenError.InvalidInput) as bad:
        phone.record_work_log(q.NewWorkLogInput(grid=grid, day=None, detail="  "))
    assert (bad.value.invalid_field, bad.value.rule) == ("journal_detail", "empty")
    with pytest.raises(q.QiaomenError.InvalidInput) as bad:
        phone.record_event(q.NewEventInput(grid=grid, kind=q.EventKind.ROAD, day=None, place="", latitude=95.0,
                                           longitude=0.0, detail="路灯不亮", photos=[]))
    assert (bad.value.invalid_field, bad.value.rule) == ("journal_gps", "out_of_range")
    with pytest.raises(q.QiaomenError.NotAllowed) as refused:
        phone.record_work_log(q.NewWorkLogInput(grid=org.grid(), day=None, detail="别的网格"))
    assert refused.value.what == "journal"
    assert [(j.id, j.state) for j in phone.journal()] == [(log.id, "pending"), (event.id, "pending")]

    summary = sync(phone)
    assert summary.progress.round_trips == 1 and summary.journal_sent == 2 and summary.rejected == 0
    assert summary.photos_sent == 1 and phone.held_photo_bytes(phone_hash) == shot
    assert [(j.id, j.state, j.refused_code) for j in phone.journal()] == [(log.id, "stored", None),
                                                                         (event.id, "stored", None)]
    assert sync(phone).journal_sent == 0
