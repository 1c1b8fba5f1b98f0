"""A supervisor, in a real headless Chromium, signs in, drills down to a household, resolves a
conflict, approves one visit and returns another for a fix; the workers' phones (the Python
bindings of the phone library) then hold the supervisor's change and the fix-up task, and the
task disappears when the worker fixes the visit. Screenshots of the main pages go to
target/screenshots/ (test artifacts, not in git)."""
import asyncio
import os
import tempfile

import qiaomen as q
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import TARGET

SHOTS = os.path.join(TARGET, "screenshots")


def shot(browser, name):
    os.makedirs(SHOTS, exist_ok=True)
    browser.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def navigate(browser, element):
    """Clicks a link or button that loads another page, and waits until it has loaded (a click
    returns before the navigation: reading too early finds the old page)."""
    browser.execute_script("window.__qiaomen_old_page = true")
    element.click()
    # A new page has a fresh window object, without the mark.
    WebDriverWait(browser, 15).until(
        lambda b: b.execute_script(
            "return window.__qiaomen_old_page === undefined && document.readyState === 'complete'"))


def phone(demo, login):
    path = os.path.join(tempfile.mkdtemp(), "phone.db")
    return asyncio.run(q.enroll(path, demo.url, demo.codes[login]))


def sync(p):
    return asyncio.run(p.sync(None))


def visit(note, hazards=()):
    return q.NewVisit(visit_day="2026-11-15", started_at_ms=1_763_164_800_000, ended_at_ms=None, gps=None,
                      outcome=q.VisitOutcome.MET, people_met=[], needs=[], disputes=[], hazards=list(hazards),
                      publicity=[q.Publicity.ANTI_FRAUD], note=note, demands=[])


def line(browser, visit_id, field):
    """The text of one line of a visit as the household page shows it."""
    return browser.find_element(
        By.CSS_SELECTOR, f'[data-visit="{visit_id}"] tr[data-field="{field}"] td.text').text


def door(door_number):
    return q.HouseholdUpdate(address=None, door_number=door_number, phone=None, status=None)


def test_a_supervisor_reviews_in_the_browser_and_the_phones_follow(demo, browser):
    wang, sun = phone(demo, "w-wang"), phone(demo, "w-sun")
    sync(wang)
    sync(sun)
    hid = sorted(wang.household_ids())[0]
    # Offline on the same household: both correct the door number differently.
    wang.update_household(hid, door("10A"))
    sun.update_household(hid, door("10-1"))
    first = wang.record_visit(hid, visit("第一次走访"))
    second = wang.record_visit(hid, visit("第二次走访", [q.Hazard(kind=q.HazardKind.FIRE, detail="楼道堆放杂物")]))
    for p in (wang, sun, wang):
        sync(p)

    # Sign in as the village supervisor of 东村.
    browser.get(demo.url + "/households/" + hid)
    assert browser.current_url.endswith("/login"), "pages need a session"
    browser.find_element(By.ID, "login").send_keys("s-chen")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    navigate(browser, browser.find_element(By.ID, "submit"))
    assert "账号或密码不正确" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "login").clear()
    browser.find_element(By.ID, "login").send_keys("s-chen")
    browser.find_element(By.ID, "password").send_keys(demo.passwords["s-chen"])
    navigate(browser, browser.find_element(By.ID, "submit"))

    # Drill down: village → grid → household.
    assert browser.find_element(By.TAG_NAME, "h1").text == "我的辖区"
    assert "东村" in browser.find_element(By.ID, "org").text
    assert "西村" not in browser.find_element(By.ID, "org").text, "only the supervisor's village"
    shot(browser, "1-org")
    navigate(browser, browser.find_element(By.LINK_TEXT, "东村第一网格"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#households a.household")
    assert len(rows) == 8
    browser.find_element(By.ID, "q").send_keys("10")
    navigate(browser, browser.find_element(By.ID, "search"))
    shot(browser, "2-grid")
    links = browser.find_elements(By.CSS_SELECTOR, "#households a.household")
    assert [a.get_attribute("href").rsplit("/", 1)[1] for a in links] == [hid]
    navigate(browser, links[0])
    shot(browser, "3-household")
    people = browser.find_element(By.ID, "people").text
    assert "户主" in people and len(people.splitlines()) >= 2, "members with their relation"

    # The conflict, side by side with its authors; keep 10-1.
    values = browser.find_elements(By.CSS_SELECTOR, ".conflict td.value")
    assert sorted(v.text for v in values) == ["10-1", "10A"]
    row = [r for r in browser.find_elements(By.CSS_SELECTOR, ".conflict tr")
           if r.find_elements(By.CSS_SELECTOR, "td.value") and r.find_element(By.CSS_SELECTOR, "td.value").text == "10-1"][0]
    assert "孙伟的手机" in row.text and "登记" in row.text, "who wrote it (by name), from which phone (by name)"
    assert sun.device_id() not in row.text, "a phone by name, not by id"
    navigate(browser, row.find_element(By.CSS_SELECTOR, "button.choose"))
    assert browser.find_element(By.ID, "no-conflicts")
    # Another household's conflict is settled with a value of the supervisor's own.
    other = sorted(wang.household_ids())[1]
    wang.update_household(other, door("11A"))
    sun.update_household(other, door("11-1"))
    for p in (wang, sun, wang):
        sync(p)
    browser.get(demo.url + "/households/" + other)
    browser.find_element(By.CSS_SELECTOR, ".conflict input.new-value").send_keys("11")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, ".conflict button.set"))
    assert browser.find_element(By.ID, "no-conflicts")
    browser.get(demo.url + "/households/" + hid)

    # The supervisor reads what each visit says before deciding.
    assert line(browser, first, "note") == "第一次走访"
    assert line(browser, second, "note") == "第二次走访"
    assert line(browser, second, "hazards") == "消防隐患：楼道堆放杂物"
    assert line(browser, second, "publicity") == "防范电信诈骗"
    assert "王" in browser.find_element(By.CSS_SELECTOR, f'[data-visit="{second}"] tr[data-field="note"]').text, \
        "who recorded the note"

    # Approve the first visit; return the second with a comment.
    navigate(browser, browser.find_element(By.CSS_SELECTOR, f'[data-visit="{first}"] button.approve'))
    browser.find_element(By.CSS_SELECTOR, f'[data-visit="{second}"] input.comment').send_keys("请补充老人用药情况")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, f'[data-visit="{second}"] button.return'))
    reviews = browser.find_element(By.ID, "reviews").text
    assert "通过" in reviews and "退回整改" in reviews and "请补充老人用药情况" in reviews
    assert "陈书记" in reviews, "the reviewer by name"
    assert "已过期" not in reviews
    assert browser.find_element(By.ID, "open-tasks").text == "1"
    shot(browser, "4-reviewed")

    # The phones get the supervisor's value and the worker the task.
    for p in (wang, sun):
        sync(p)
        assert p.household(hid).door_number == "10-1" and p.conflicts(hid) == []
        assert p.household(other).door_number == "11" and p.conflicts(other) == []
    tasks = wang.fix_tasks()
    assert [(t.visit_id, t.comment) for t in tasks] == [(second, "请补充老人用药情况")]

    # The worker fixes the visit: the task goes, and the approval of that version is stale.
    wang.update_visit_note(hid, second, "第二次走访：老人按时服用降压药")
    assert wang.fix_tasks() == []
    sync(wang)
    browser.refresh()
    assert browser.find_element(By.ID, "open-tasks").text == "0"
    assert "已过期" in browser.find_element(By.ID, "reviews").text
    # The fix, read as a difference: the note before and after, nothing else.
    changes = browser.find_elements(By.CSS_SELECTOR, "#reviews tr.change")
    fields = sorted({c.get_attribute("data-field") for c in changes})
    assert fields == ["note"], fields
    note_change = [c for c in changes if "第二次走访：老人按时服用降压药" in c.text]
    assert note_change and "第二次走访" in note_change[0].find_element(By.CSS_SELECTOR, "td.before").text
    assert line(browser, second, "note") == "第二次走访：老人按时服用降压药"
    provenance = browser.find_element(By.ID, "provenance").text
    assert "王" in provenance and "的手机" in provenance and wang.device_id() not in provenance
    assert "走访 · 走访记录" in provenance, "fields by name, not by path"
    shot(browser, "5-fixed")
    # Seen the fix: approve it; the new review is current.
    navigate(browser, browser.find_element(By.CSS_SELECTOR, f'[data-visit="{second}"] button.approve'))
    assert "有效" in browser.find_element(By.ID, "reviews").text
    shot(browser, "6-fix-approved")

    # Sign out: the pages ask for a login again.
    navigate(browser, browser.find_element(By.ID, "logout"))
    browser.get(demo.url + "/")
    assert browser.current_url.endswith("/login")
