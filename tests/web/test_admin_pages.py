"""An admin with no command line, in a real headless Chromium: adds a worker and assigns them to
a grid, issues an enrollment code, and the QR code the page shows — photographed as a phone's
camera would (a screenshot of it, decoded by zxing-cpp) — enrolls a phone (the Python bindings)
that then receives the grid. The audit page names each step."""
import asyncio
import io
import os
import tempfile
import urllib.parse

import qiaomen as q
import zxingcpp
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from test_supervisor_pages import navigate, shot
from test_workflow_pages import sign_in


def fill(browser, form, **fields):
    for name, value in fields.items():
        browser.find_element(By.CSS_SELECTOR, f"#{form} input[name={name}]").send_keys(value)


def test_an_admin_enrolls_a_new_worker_from_the_page_with_a_qr_code(demo, browser):
    sign_in(browser, demo, "admin")
    navigate(browser, browser.find_element(By.ID, "nav-admin"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "管理"

    fill(browser, "user-form", login="w-new", name="钱新")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "#user-form button"))
    assert "已新增用户" in browser.find_element(By.ID, "done").text

    fill(browser, "assign-form", login="w-new")
    Select(browser.find_element(By.CSS_SELECTOR, "#assign-form select[name=unit]")).select_by_visible_text("东村第二网格")
    Select(browser.find_element(By.CSS_SELECTOR, "#assign-form select[name=role]")).select_by_value("grid_worker")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "#assign-form button"))
    assert "已任职" in browser.find_element(By.ID, "done").text
    assert "w-new" in browser.find_element(By.ID, "assignments").text

    fill(browser, "code-form", login="w-new")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "#code-form button"))
    shot(browser, "admin-enrollment-code")
    png = browser.find_element(By.ID, "qr").screenshot_as_png
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1, "one QR code, readable by a camera"
    uri = urllib.parse.urlparse(found[0].text)
    assert uri.scheme == "qiaomen" and uri.path == "enroll"
    fields = urllib.parse.parse_qs(uri.query)
    server, code = fields["server"][0], fields["code"][0]
    assert server == demo.url
    assert browser.find_element(By.ID, "code").text == code

    path = os.path.join(tempfile.mkdtemp(), "phone.db")
    qian = asyncio.run(q.enroll(path, server, code))
    asyncio.run(qian.sync(None))
    assert qian.grids() == ["dongcun-2"]
    assert len(qian.household_ids()) > 0

    browser.get(demo.url + "/admin/audit")
    audit = browser.find_element(By.ID, "audit").text
    for step in ("新增用户", "任职", "生成登记码", "手机登记"):
        assert step in audit, step
