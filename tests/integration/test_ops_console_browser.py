"""The SCM-S web console in a real headless browser (SPEC D15): Debian's chromium driven by
Playwright, against a real ``msgin5g server --http`` process; every change made in the browser is
checked independently through the CoAP command line (``msgin5g config`` / ``msgin5g ue``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .ops_procs import HttpActor
from .procs import MSGIN5G

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

if sync_playwright is None or not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("the console tests need playwright and Debian's chromium (.ci/run installs them)")
    pytest.skip("playwright or chromium missing (apt-get install chromium)", allow_module_level=True)

UE = "urn:gsma:imei:35209900-176148-1"
DOC = {
    "configName": "console-a",
    "valServiceDomain": "msgin5g.example",
    "valUeIds": {"uris": [UE]},
    "ueConfigs": [
        {
            "configType": "ON_NETWORK",
            "configData": {
                "msgin5gServerAddress": "coap://m.example",
                "ueServiceId": "a@x",
                "segmentSize": 1024,
            },
        }
    ],
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_documents_resolution_gateways_and_live_counters(browser, tmp_path):
    db = f"sqlite:///{tmp_path}/c.db"
    srv = HttpActor("server", "--insecure", "--port", "0", "--db", db, console=True)
    try:
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(srv.console_url)
        expect(page.locator("#mode")).to_have_text("INSECURE lab mode")
        expect(page.locator("#doc-count")).to_have_text("0 documents")

        # create
        page.click("#new-doc")
        page.fill("#doc-text", json.dumps(DOC))
        page.click("#save-doc")
        expect(page.locator("#doc-message")).to_contain_text("created ")
        doc_id = page.locator("#doc-message").inner_text().split("created ", 1)[1].strip()
        expect(page.locator(f'#doc-table tr[data-id="{doc_id}"]')).to_be_visible()
        got = json.loads(cli("config", "get", doc_id, "--server", srv.api_root).stdout)
        assert got["configName"] == "console-a" and got["ueConfigs"][0]["configData"]["ueServiceId"] == "a@x"

        # a refused edit shows the same message as the command line
        bad = {**DOC, "valUeIds": {"uris": []}}
        page.fill("#doc-text", json.dumps(bad))
        page.click("#save-doc")
        expect(page.locator("#doc-message")).to_contain_text("4.00 valUeIds/uris")
        f = tmp_path / "bad.json"
        f.write_text(json.dumps(bad))
        p = cli("config", "update", doc_id, str(f), "--server", srv.api_root)
        shown = page.locator("#doc-message").inner_text().removeprefix("4.00 ")
        assert p.returncode == 1 and shown in p.stderr

        # edit
        good = json.loads(json.dumps(DOC))
        good["ueConfigs"][0]["configData"]["ueServiceId"] = "b@x"
        page.fill("#doc-text", json.dumps(good))
        page.click("#save-doc")
        expect(page.locator("#doc-message")).to_have_text(f"saved {doc_id}")
        got = json.loads(cli("config", "get", doc_id, "--server", srv.api_root).stdout)
        assert got["ueConfigs"][0]["configData"]["ueServiceId"] == "b@x"

        # search
        page.fill("#search", "no-such-text")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#doc-count")).to_have_text("0 documents")
        page.fill("#search", "console-a")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#doc-count")).to_have_text("1 documents")

        # what would this UE get
        page.click("nav button[data-tab=resolve]")
        page.fill("#ue-uri", UE)
        page.click("#resolve-form button[type=submit]")
        expect(page.locator("#resolve-answer")).to_contain_text("would get 2.05")
        row = page.locator("#resolve-table tbody tr").first
        expect(row).to_contain_text("lists this UE's URI")
        expect(row).to_contain_text("applied")
        page.fill("#ue-uri", "urn:other:1")
        page.click("#resolve-form button[type=submit]")
        expect(page.locator("#resolve-answer")).to_contain_text("would get 4.04")

        # gateway registry
        page.click("nav button[data-tab=gateways]")
        page.fill("#gw-id", "gw7")
        page.fill("#gw-coverage", '{"imeiRanges": [{"tac": "35209900"}]}')
        page.click("#gw-form button[type=submit]")
        expect(page.locator('#gw-table tr[data-id="gw7"]')).to_be_visible()
        page.fill("#gw-id", "gw8")
        page.fill("#gw-coverage", '{"all": false}')
        page.click("#gw-form button[type=submit]")
        expect(page.locator("#gw-message")).to_have_text("'all' can only be true")
        p = cli("config", "gateway", "list", "--db", db, "--json")
        assert json.loads(p.stdout) == {"gw7": {"imeiRanges": [{"tac": "35209900"}]}}

        # live counters (server-sent events): a CoAP request shows up without reloading
        page.click("nav button[data-tab=live]")
        expect(page.locator('#live-table tr[data-counter="stored_documents"] td').nth(1)).to_have_text("1")
        assert cli("ue", "get-config", "--server", srv.api_root, "--ue-uri", UE).returncode == 0
        expect(page.locator('#live-table tr[data-counter="service.scoped-ok"] td').nth(1)).to_have_text("1")

        # delete
        page.click("nav button[data-tab=docs]")
        page.click(f'#doc-table tr[data-id="{doc_id}"] button')
        page.click("#delete-doc")
        expect(page.locator("#doc-message")).to_have_text(f"deleted {doc_id}")
        assert cli("config", "get", doc_id, "--server", srv.api_root).returncode == 4
    finally:
        srv.stop()


def test_secured_console_login_and_key_revocation(browser, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"  # the OSCORE keys live in the store (SPEC D12)
    assert cli("keys", "add", "admin", "--db", db, "--out", str(tmp_path / "admin.json")).returncode == 0
    ue_creds = tmp_path / "ue.json"
    assert cli("keys", "add", f"ue:{UE}", "--db", db, "--out", str(ue_creds)).returncode == 0
    srv = HttpActor("server", "--port", "0", "--db", db, console=True)
    try:
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        # without the token: the login form, and a wrong token is refused
        page.goto(srv.console_url.split("#", 1)[0])
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "not-the-token-at-all")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("wrong token")
        # the URL the server printed logs in
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(srv.console_url)
        expect(page.locator("#mode")).to_have_text("secured (OSCORE)")
        page.click("nav button[data-tab=keys]")
        ue_row = page.locator("#keys-table tbody tr", has_text=f"ue:{UE}")
        expect(ue_row).to_contain_text("active")
        # the UE's key works before and not after revocation
        ask = ("ue", "get-config", "--server", srv.api_root, "--ue-uri", UE, "--credentials", str(ue_creds))
        assert cli(*ask).returncode == 4  # authenticated: no document yet
        ue_row.locator("button").click()
        expect(page.locator("#keys-message")).to_contain_text("revoked ")
        expect(ue_row).to_contain_text("revoked")
        p = cli(*ask)
        assert p.returncode == 1 and "4.01" in p.stdout
    finally:
        srv.stop()
