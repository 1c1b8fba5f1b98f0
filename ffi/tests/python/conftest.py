"""Starts a real qiaomen-server process for the tests; the bindings come from
ffi/generate-bindings.sh (target/bindings/python)."""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
sys.path.insert(0, os.path.join(TARGET, "bindings", "python"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_BIN = os.path.join(TARGET, "debug", "qiaomen-server")


class Org:
    """The server's org, driven through its admin command line (`qiaomen-server admin`)."""

    def __init__(self, url, data):
        self.url, self.data = url, data
        self.admin("unit", "add", "--id", "py-county", "--kind", "county", "--name", "测试县")
        self.admin("unit", "add", "--id", "py-town", "--kind", "town", "--parent", "py-county", "--name", "测试镇")
        self.admin("unit", "add", "--id", "py-village", "--kind", "village", "--parent", "py-town", "--name", "测试村")

    def admin(self, *args, env=None):
        done = subprocess.run([SERVER_BIN, "admin", "--data-dir", self.data, *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})
        if done.returncode != 0:
            raise RuntimeError(f"admin {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def grid(self):
        g = "py-" + uuid.uuid4().hex[:8]
        self.admin("unit", "add", "--id", g, "--kind", "grid", "--parent", "py-village", "--name", g)
        return g

    def code(self, unit, role="grid_worker"):
        """A one-time enrollment code for a new user with `role` at `unit`."""
        login = "u-" + uuid.uuid4().hex[:12]
        self.admin("user", "add", "--login", login, "--name", "测试员")
        # Assigned since the start of the year: the tests record visits for fixed past days,
        # and a visit may not be for a cycle before its worker held the grid.
        self.admin("assign", "--login", login, "--unit", unit, "--role", role, "--from", "2026-01-01")
        return self.admin("enroll-code", "--login", login)


    def supervisor_session(self, unit, role="village_supervisor"):
        """A supervisor with a password at `unit`, signed in: returns the session token."""
        import json
        login = "s-" + uuid.uuid4().hex[:12]
        password = "py-" + uuid.uuid4().hex
        self.admin("user", "add", "--login", login, "--name", "督导")
        # Assigned since the start of the year: the tests record visits for fixed past days,
        # and a visit may not be for a cycle before its worker held the grid.
        self.admin("assign", "--login", login, "--unit", unit, "--role", role, "--from", "2026-01-01")
        self.admin("user", "password", "--login", login, env={"QIAOMEN_PASSWORD": password})
        return self.request("POST", "/v1/login", None, {"login": login, "password": password})["token"]

    def request(self, method, path, token, body=None):
        import json
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              **({"authorization": "Bearer " + token} if token else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")


@pytest.fixture(scope="session")
def org(server_url):
    return Org(server_url, server_url.data)


class Url(str):
    """The server's URL, also carrying its data folder for the admin commands."""
    data = ""


@pytest.fixture(scope="session")
def server_url():
    data = tempfile.mkdtemp(prefix="qiaomen-server-")
    port = free_port()
    proc = subprocess.Popen(
        [SERVER_BIN, "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = Url(f"http://127.0.0.1:{port}")
    url.data = data
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
    yield url
    proc.terminate()
    proc.wait(timeout=10)
