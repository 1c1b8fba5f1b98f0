"""A hotline work order goes round the loop in a real headless Chromium and on a phone: the
command centre dispatches it, the water team accepts and finishes it, the grid worker tells the
resident and does the return visit offline on the phone (the Python bindings), and the town
supervisor closes it. The coverage and statistics pages render with their drill-down and their
SVG charts, the monthly report and a grid's map render (the report without navigation in print); a weekly
task list pushed from the page reaches the phone and the worker's report comes back.
Screenshots go to target/screenshots/."""
import asyncio
import os
import tempfile

import qiaomen as q
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from test_supervisor_pages import navigate, shot


def sign_in(browser, demo, login):
    browser.get(demo.url + "/")
    logout = browser.find_elements(By.ID, "logout")
    if logout:
        navigate(browser, logout[0])
    browser.get(demo.url + "/login")
    browser.find_element(By.ID, "login").send_keys(login)
    browser.find_element(By.ID, "password").send_keys(demo.passwords[login])
    navigate(browser, browser.find_element(By.ID, "submit"))


def take_step(browser, action, comment="", team="", tier=""):
    Select(browser.find_element(By.ID, "action")).select_by_value(action)
    if comment:
        browser.find_element(By.ID, "comment").send_keys(comment)
    if team:
        # A team is chosen by its name from the list, not typed as an id.
        Select(browser.find_element(By.ID, "team")).select_by_visible_text(team)
    if tier:
        Select(browser.find_element(By.ID, "tier")).select_by_value(tier)
    navigate(browser, browser.find_element(By.ID, "submit-step"))
    return browser.find_element(By.ID, "order-status").text


def test_a_hotline_order_goes_round_the_loop_between_the_pages_and_the_phone(demo, browser):
    path = os.path.join(tempfile.mkdtemp(), "phone.db")
    zhao = asyncio.run(q.enroll(path, demo.url, demo.codes["w-zhao"]))
    asyncio.run(zhao.sync(None))
    waiting = zhao.work_orders("xicun-1")
    assert len(waiting) == 2 and all(o.waits_for == q.StepKind.TRIAGE for o in waiting)
    order = waiting[0]

    # The command centre dispatches it to the county water bureau.
    sign_in(browser, demo, "cc-zhou")
    navigate(browser, browser.find_element(By.ID, "nav-orders"))
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.order")]
    assert any(h.endswith(order.demand_id) for h in links), links
    browser.get(f"{demo.url}/orders/{order.demand_id}")
    assert browser.find_element(By.ID, "order-status").text == "待分派"
    assert take_step(browser, "dispatch", "请水利局处理", team="县水利局", tier="coordinate") == "已派单"
    shot(browser, "order-dispatched")

    # The team accepts, handles and finishes it.
    sign_in(browser, demo, "t-ma")
    navigate(browser, browser.find_element(By.ID, "nav-orders"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "a.order")) == 1, "a team sees only its orders"
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "a.order"))
    assert take_step(browser, "accept") == "已接单"
    assert take_step(browser, "start") == "办理中"
    assert take_step(browser, "finish", "已疏通排水沟") == "已办结"

    # The worker tells the resident and does the return visit offline, then syncs.
    asyncio.run(zhao.sync(None))
    mine = [o for o in zhao.work_orders("xicun-1") if o.demand_id == order.demand_id]
    assert mine[0].waits_for == q.StepKind.FEEDBACK
    zhao.demand_step(order.household_id, order.demand_id,
                     q.DemandStepInput(action=q.DemandAction.FEEDBACK, comment="已告知", satisfaction=None))
    zhao.demand_step(order.household_id, order.demand_id,
                     q.DemandStepInput(action=q.DemandAction.RETURN_VISIT, comment="群众满意",
                                       satisfaction=q.Satisfaction.SATISFIED))
    asyncio.run(zhao.sync(None))
    assert zhao.rejected_changes() == []

    # The town supervisor sees the return visit and closes the order.
    sign_in(browser, demo, "s-liu")
    browser.get(f"{demo.url}/orders/{order.demand_id}")
    assert browser.find_element(By.ID, "order-status").text == "已回访"
    assert take_step(browser, "close") == "已归档"
    rows = browser.find_elements(By.CSS_SELECTOR, "#history tr")
    assert len(rows) == 1 + 7, [r.text for r in rows]
    assert "满意" in rows[6].text
    shot(browser, "order-closed")

    # Coverage: town → village drill-down; statistics with the red/black list.
    navigate(browser, browser.find_element(By.ID, "nav-coverage"))
    assert "走访覆盖" in browser.find_element(By.TAG_NAME, "h1").text
    villages = browser.find_elements(By.CSS_SELECTOR, "#children a.unit")
    assert [v.text for v in villages] == ["东村", "西村"]
    navigate(browser, villages[1])
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("西村")
    shot(browser, "coverage")
    navigate(browser, browser.find_element(By.ID, "nav-stats"))
    cells = browser.find_elements(By.CSS_SELECTOR, "#figures tr.town td")
    # 6 hotline orders were received in the town this month; one is resolved.
    assert cells[1].text == "6" and cells[2].text == "1", [c.text for c in cells]
    assert browser.find_elements(By.ID, "red") and browser.find_elements(By.ID, "black")
    # The charts are inline SVG drawn on the server: six visit days, two bars a month.
    chart = browser.find_element(By.CSS_SELECTOR, "#coverage-chart svg")
    assert chart.size["width"] > 100 and chart.size["height"] > 20, chart.size
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) == 6
    demands = browser.find_element(By.CSS_SELECTOR, "#demand-chart svg")
    received = demands.find_elements(By.CSS_SELECTOR, "rect.received")
    assert len(received) == 6 and len(demands.find_elements(By.CSS_SELECTOR, "rect.resolved")) == 6
    # This month's bar counts the six hotline orders, as the table does.
    assert received[-1].get_attribute("data-value") == "6"
    assert received[-1].size["height"] > 0
    shot(browser, "stats")
    # The printable monthly report: both charts; printed, no navigation.
    navigate(browser, browser.find_element(By.ID, "report-link"))
    assert "访情通报" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")) == 2
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not browser.find_element(By.ID, "nav").is_displayed()
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    shot(browser, "report")
    # A grid's map: the marks' legend and the households without a position counted.
    browser.get(demo.url + "/grids/xicun-1/map")
    svg = browser.find_element(By.CSS_SELECTOR, "#map svg")
    assert svg.size["width"] > 100
    assert len(svg.find_elements(By.CSS_SELECTOR, "g.legend g.key")) == 4
    assert "无定位的住户" in browser.find_element(By.ID, "without-gps").text
    shot(browser, "map")
    navigate(browser, browser.find_element(By.ID, "nav-stats"))
    asyncio.run(zhao.sync(None))
    assert all(o.demand_id != order.demand_id for o in zhao.work_orders("xicun-1"))

    # A weekly task list pushed from the page reaches the phone; the worker's offline report
    # comes back to the page.
    navigate(browser, browser.find_element(By.ID, "nav-tasks"))
    browser.find_element(By.ID, "title").send_keys("第48周清单")
    browser.find_element(By.ID, "items").send_keys("排查独居老人用火安全\n张贴防诈骗海报")
    navigate(browser, browser.find_element(By.ID, "push"))
    assert "完成 0/6" in browser.find_element(By.CSS_SELECTOR, "section.task-list h2").text
    asyncio.run(zhao.sync(None))
    (week,) = zhao.task_lists()
    assert week.grids == ["xicun-1"] and len(week.items) == 2
    zhao.complete_task(week.id, 1, "xicun-1", "村口张贴 3 张")
    assert zhao.task_lists()[0].done[0].on_server is False
    assert asyncio.run(zhao.sync(None)).tasks_sent == 1
    browser.refresh()
    assert "完成 1/6" in browser.find_element(By.CSS_SELECTOR, "section.task-list h2").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.task-list td span.current")) == 1
    shot(browser, "tasks")


def test_a_gbk_hotline_file_is_previewed_then_imported_from_the_page_with_its_bad_rows_listed(demo, browser):
    # Runs last: the figures checked above count the demo's six orders only.
    # The file as the hotline system exports it: GBK, Chinese headers, an extra column, an
    # empty 是否紧急, two bad rows (a category nobody knows, a door number nobody lives at).
    text = ("工单号,来电时间,网格编号,门牌号,诉求类别,诉求内容,是否紧急\r\n"
            "HL-WEB-1,2026-11-30 09:00,dongcun-2,10,住房,房屋漏雨,是\r\n"
            "HL-WEB-2,2026-11-30 09:10,dongcun-2,11,其他,路灯不亮,\r\n"
            "HL-WEB-3,2026-11-30 09:20,dongcun-2,12,交通,公交站太远,否\r\n"
            "HL-WEB-4,2026-11-30 09:30,dongcun-2,99,医疗,需要上门体检,否\r\n")
    path = os.path.join(tempfile.mkdtemp(), "12345工单.csv")
    with open(path, "wb") as f:
        f.write(text.encode("gbk"))

    sign_in(browser, demo, "cc-zhou")
    navigate(browser, browser.find_element(By.ID, "nav-orders"))
    navigate(browser, browser.find_element(By.ID, "import-link"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "导入12345工单"
    browser.find_element(By.ID, "file").send_keys(path)
    navigate(browser, browser.find_element(By.ID, "preview-import"))

    # The preview: every row with what would happen to it; nothing imported yet.
    assert browser.find_element(By.ID, "would-create").text == "2"
    assert browser.find_element(By.ID, "bad-count").text == "2"
    bad = browser.find_elements(By.CSS_SELECTOR, "#preview tr.row-error")
    assert [r.find_element(By.TAG_NAME, "td").text for r in bad] == ["3", "4"]
    assert "类别" in bad[0].text and "门牌号" in bad[1].text, [r.text for r in bad]
    good = browser.find_elements(By.CSS_SELECTOR, "#preview tr.row-would_create")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in good] == ["HL-WEB-1", "HL-WEB-2"]
    assert "房屋漏雨" in good[0].text
    shot(browser, "import-preview")
    preview = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(demo.url + "/orders")
    assert "HL-WEB-1" not in browser.find_element(By.ID, "orders").text
    browser.close()
    browser.switch_to.window(preview)

    # Import the good rows: two created, the two bad ones listed with their reasons.
    navigate(browser, browser.find_element(By.ID, "confirm-import"))
    assert browser.find_element(By.ID, "created").text == "2"
    assert browser.find_element(By.ID, "skipped").text == "0"
    listed = browser.find_elements(By.CSS_SELECTOR, "#bad-rows tr.bad-row")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in listed] == ["3", "4"]
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in listed] == ["HL-WEB-3", "HL-WEB-4"]
    shot(browser, "import-result")
    navigate(browser, browser.find_element(By.ID, "nav-orders"))
    orders = browser.find_element(By.ID, "orders").text
    assert "HL-WEB-1" in orders and "HL-WEB-2" in orders and "HL-WEB-3" not in orders

    # The same file again: the imported rows would be skipped.
    navigate(browser, browser.find_element(By.ID, "import-link"))
    browser.find_element(By.ID, "file").send_keys(path)
    navigate(browser, browser.find_element(By.ID, "preview-import"))
    assert browser.find_element(By.ID, "would-create").text == "0"
    assert browser.find_element(By.ID, "would-skip").text == "2"
    assert not browser.find_elements(By.ID, "confirm-import")
