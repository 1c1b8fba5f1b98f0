"""Events and work logs in a real headless Chromium: a grid worker records an event and a day's
work log on the phone (the Python bindings) and syncs; a supervisor finds them from the menu,
sees the counts on the statistics page, and dispatches the event as a work order to the door
nearest it, which reaches the worker's phone at the next sync. On a demo county of its own:
the entries change the figures the other modules check."""
import asyncio
import os
import tempfile

import qiaomen as q
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from test_supervisor_pages import navigate, shot
from test_workflow_pages import sign_in


def test_an_event_from_the_phone_is_seen_counted_and_dispatched_as_a_work_order(own_demo, browser):
    demo = own_demo
    path = os.path.join(tempfile.mkdtemp(), "phone.db")
    zhao = asyncio.run(q.enroll(path, demo.url, demo.codes["w-zhao"]))
    asyncio.run(zhao.sync(None))
    door = next(zhao.household(h).door_number for h in zhao.household_ids()
                if zhao.household(h).grid == "xicun-1")
    before = {o.demand_id for o in zhao.work_orders("xicun-1")}
    zhao.record_event(q.NewEventInput(grid="xicun-1", kind=q.EventKind.ROAD, day=None, place="村口桥头",
                                      latitude=34.75, longitude=113.62, detail="电线杆倾斜，有倒塌危险", photos=[]))
    zhao.record_work_log(q.NewWorkLogInput(grid="xicun-1", day=None, detail="走访 12 户，排查隐患 2 处"))
    summary = asyncio.run(zhao.sync(None))
    assert summary.journal_sent == 2

    sign_in(browser, demo, "s-liu")
    browser.get(demo.url + "/stats")
    events = browser.find_element(By.CSS_SELECTOR, "#figures a.journal-events")
    assert int(events.text) >= 1
    navigate(browser, browser.find_element(By.ID, "nav-journal"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "电线杆倾斜，有倒塌危险" in body and "走访 12 户" in body
    assert "道路设施" in body
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#entries tr.event")
               if "电线杆倾斜" in r.text)
    shot(browser, "journal")

    # A door the grid lacks is refused by name, nothing written; the right one opens the order.
    form = row.find_element(By.CSS_SELECTOR, "form.dispatch")
    form.find_element(By.NAME, "door").send_keys("不存在的门牌")
    navigate(browser, form.find_element(By.CSS_SELECTOR, "button"))
    assert "本网格没有这个门牌号的住户" in browser.find_element(By.ID, "problem").text
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#entries tr.event")
               if "电线杆倾斜" in r.text)
    form = row.find_element(By.CSS_SELECTOR, "form.dispatch")
    form.find_element(By.NAME, "door").send_keys(door)
    Select(form.find_element(By.NAME, "category")).select_by_value("other")
    navigate(browser, form.find_element(By.CSS_SELECTOR, "button"))
    assert "/orders/" in browser.current_url
    assert "电线杆倾斜" in browser.find_element(By.TAG_NAME, "body").text
    shot(browser, "journal-dispatched")

    # The order is on the worker's phone after a sync.
    asyncio.run(zhao.sync(None))
    new = [o for o in zhao.work_orders("xicun-1") if o.demand_id not in before]
    assert len(new) == 1 and "电线杆倾斜" in new[0].text, new
    browser.get(demo.url + "/journal")
    assert "已转工单" in browser.find_element(By.ID, "entries").text
