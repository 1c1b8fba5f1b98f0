"""A real qiaomen-server process with the demo county (`admin seed-demo`), for the browser
tests of the supervisors' pages. The phones use the Python bindings (ffi/generate-bindings.sh)."""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
sys.path.insert(0, os.path.join(TARGET, "bindings", "python"))
SERVER_BIN = os.path.join(TARGET, "debug", "qiaomen-server")


class Demo:
    def __init__(self, url, data, codes, passwords):
        self.url, self.data, self.codes, self.passwords = url, data, codes, passwords


def _start_demo():
    """Seeds a demo county in a fresh data directory and starts a server on it: the server's
    process and what the pages' tests sign in with."""
    data = tempfile.mkdtemp(prefix="qiaomen-web-")
    seeded = subprocess.run([SERVER_BIN, "--data-dir", data, "admin", "seed-demo"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    codes, passwords = {}, {}
    for line in seeded.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("w-"):
            codes[parts[0]] = parts[2]
        elif len(parts) == 3 and parts[1] in ("village_supervisor", "town_supervisor", "command_centre", "team_member", "admin"):
            passwords[parts[0]] = parts[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([SERVER_BIN, "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
    return proc, Demo(url, data, codes, passwords)


@pytest.fixture(scope="session")
def demo():
    proc, d = _start_demo()
    yield d
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def own_demo():
    """A demo county of the module's own, for tests whose records would change the figures
    the other modules check."""
    proc, d = _start_demo()
    yield d
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600",
                "--lang=zh-CN"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                              options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def browser(_chromium):
    """The one Chromium of the run, signed out: each test starts without the cookies of the last."""
    _chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return _chromium
