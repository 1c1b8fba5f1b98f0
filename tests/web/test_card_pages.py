"""The service card (便民服务卡) in a real headless Chromium: a supervisor prints a grid's cards
(one QR code a household, nothing but the sheet in print), a resident opens a card's page with
no account, leaves a request and gets a tracking number; the grid worker's phone (the Python
bindings) holds the demand after a sync; the resident looks up its state; a reissued card's old
page is refused. On a demo county of its own: the request would change the figures the other
modules check."""
import asyncio
import os
import tempfile

import qiaomen as q
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from test_supervisor_pages import navigate, shot
from test_workflow_pages import sign_in


def test_a_card_is_printed_used_by_a_resident_tracked_and_reissued(own_demo, browser):
    demo = own_demo
    path = os.path.join(tempfile.mkdtemp(), "phone.db")
    zhao = asyncio.run(q.enroll(path, demo.url, demo.codes["w-zhao"]))
    asyncio.run(zhao.sync(None))
    before = {o.demand_id for o in zhao.work_orders("xicun-1")}

    # The supervisor prints the grid's cards from the grid's page.
    sign_in(browser, demo, "s-liu")
    browser.get(demo.url + "/grids/xicun-1")
    navigate(browser, browser.find_element(By.ID, "cards-link"))
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards section.card")
    assert len(cards) >= 2, len(cards)
    assert all(c.find_elements(By.CSS_SELECTOR, ".qr svg") for c in cards)
    card = cards[0]
    household = card.get_attribute("data-household")
    url = card.find_element(By.CSS_SELECTOR, "a.card-link").get_attribute("href")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not browser.find_element(By.ID, "nav").is_displayed()
    assert not card.find_element(By.CSS_SELECTOR, "button.reissue").is_displayed()
    assert card.find_element(By.CSS_SELECTOR, ".qr svg").is_displayed()
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    shot(browser, "cards-sheet")

    # A resident scans it: no account, no household's data on the page.
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    browser.get(url)
    assert "便民服务卡" in browser.title
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "反映诉求" in page and "查询进度" in page
    # An empty request is refused, named by its field.
    navigate(browser, browser.find_element(By.ID, "send"))
    assert browser.find_element(By.ID, "problem").get_attribute("data-field") == "text"
    browser.find_element(By.ID, "text").send_keys("村口路灯坏了一个星期")
    Select(browser.find_element(By.ID, "category")).select_by_value("other")
    browser.find_element(By.ID, "callback").send_keys("13900001111")
    navigate(browser, browser.find_element(By.ID, "send"))
    tracking = browser.find_element(By.ID, "tracking").text
    assert len(tracking) == 11 and tracking[5] == "-", tracking
    shot(browser, "card-submitted")

    # The worker's phone holds it after a sync, in the grid's work orders.
    asyncio.run(zhao.sync(None))
    new = [o for o in zhao.work_orders("xicun-1") if o.demand_id not in before]
    assert len(new) == 1, new
    assert new[0].household_id == household
    assert "村口路灯坏了一个星期" in new[0].text

    # The resident looks it up on the same page.
    browser.find_element(By.ID, "track").send_keys(tracking.lower())
    navigate(browser, browser.find_element(By.ID, "lookup"))
    assert browser.find_element(By.ID, "tracked-status").text == "待分派"
    shot(browser, "card-tracked")

    # The supervisor reissues the card; the old page is refused, the new one works.
    sign_in(browser, demo, "s-liu")
    browser.get(demo.url + "/grids/xicun-1/cards")
    old = browser.find_element(By.CSS_SELECTOR, f'section.card[data-household="{household}"]')
    navigate(browser, old.find_element(By.CSS_SELECTOR, "button.reissue"))
    fresh = browser.find_element(By.CSS_SELECTOR, f'section.card[data-household="{household}"]')
    new_url = fresh.find_element(By.CSS_SELECTOR, "a.card-link").get_attribute("href")
    assert new_url != url
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    browser.get(url)
    assert "此卡已失效" in browser.find_element(By.ID, "card-gone").text
    browser.get(new_url)
    assert browser.find_elements(By.ID, "request-form")
    # Requests left on the old card stay trackable on the new one.
    browser.find_element(By.ID, "track").send_keys(tracking)
    navigate(browser, browser.find_element(By.ID, "lookup"))
    assert browser.find_element(By.ID, "tracked-status").text == "待分派"
