"""The explorer (devsen/explorer) in a real headless Chromium against real `devsen node`
processes on anvil (the signed-meter devnet of test_e2e_signed_meter, reused): every page
renders the real network; a settled session's receipt prints; "verify this event" checks the
proof in the browser, reading the anchored root and the validator sets from anvil itself,
and says VALID with the same checks as `devsen audit verify`; a hostile node (a proxy that
alters one byte of the node's JSON) makes the browser say INVALID with the reason.

Screenshots: bench/results/explorer/*.png (and the receipt as PDF). Needs Debian's chromium
and chromium-driver (`make setup` installs them); skipped without them unless CI=true."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from test_e2e_signed_meter import _settled, network  # noqa: F401  (the module fixture, reused)

from anchoring.audit import audit_main
from anchoring.chain.client import ChainClient
from anchoring.chain.deploy import Deployment
from anchoring.chain.transact import TransactionSender, connect
from devsen.demo_charger import connect_demo_charger, demo_meter_key
from devsen.devnet import DEMO_CHARGER, DEMO_DEPOSIT, DEMO_ID_TAG, DEMO_PASSWORD, DEMO_PRICE_PER_KWH
from devsen.explorer import CONTENT_SECURITY_POLICY
from devsen.wallet import create_device

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1100", "--disable-dev-shm-usage"]
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "explorer"
MAPPED_CHARGER, MAPPED_PASSWORD = "EXPLORER-MAPPED", "explorer-password-1"
MAPPED_LOCATION = "52.5200,13.4050;connectors=CCS2+Type2;name=Depot Mitte"
PAGE_TIMEOUT_S = 90

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and chromium-driver (make setup installs them)")


@contextlib.contextmanager
def browser(tmp: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):
            for entry in driver.get_log("browser"):  # type: ignore[no-untyped-call,unused-ignore]
                print("browser:", entry.get("level"), entry.get("message"))
        driver.quit()


def open_page(driver: Any, url: str, ready: Callable[[Any], bool] | None = None) -> None:
    """Load `url` and wait until the page has rendered its hash route (and `ready` holds)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # Pages that poll re-render their sections: an element read mid-render is stale, not an error.
    WebDriverWait(driver, PAGE_TIMEOUT_S, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: d.execute_script("return document.body.dataset.ready === location.hash")
        and (ready is None or ready(d)))


def text_of(driver: Any, css: str) -> str:
    """The text of the element at `css`, read again if a re-render replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(9):
        with contextlib.suppress(StaleElementReferenceException):
            return str(driver.find_element(By.CSS_SELECTOR, css).text)
        time.sleep(0.1)
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shoot(driver: Any, name: str) -> Path:
    """A full-page screenshot under bench/results/explorer/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height + 40, 700), 4000))
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1100)
    return path


class TamperProxy:
    """A hostile node: forwards GETs to a real node and alters one byte of chosen JSON answers.

    `tamper(path, document) -> document` is applied to every JSON answer (None: forward as is).
    Listens on 127.0.0.1 only; one thread per request; bounded by the test's lifetime."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tamper: Callable[[str, Any], Any] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    with urllib.request.urlopen(proxy.upstream + self.path, timeout=15) as answer:
                        status, headers, body = answer.status, dict(answer.headers), answer.read()
                except urllib.error.HTTPError as exc:
                    status, headers, body = exc.code, dict(exc.headers), exc.read()
                if proxy.tamper is not None and headers.get("content-type", "").startswith("application/json"):
                    body = json.dumps(proxy.tamper(self.path, json.loads(body))).encode()
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def flip_hex(text: str, at: int) -> str:
    """`text` (0x-hex) with the hex digit at `at` (after the prefix) changed."""
    i = 2 + at
    return text[:i] + ("1" if text[i] == "0" else "0") + text[i + 1:]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def cli_verify(event_id: str, node_url: str, rpc: str, deployment: Path) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = audit_main(["verify", event_id, "--node", node_url, "--rpc", rpc, "--deployment", str(deployment),
                           "--json"])
    return code, json.loads(out.getvalue())


async def _anchored(event_id: str, node_url: str, rpc: str, deployment: Path) -> dict[str, Any]:
    """The CLI auditor's VALID report for the event, once its batch is anchored."""
    with trio.fail_after(180):
        while True:
            code, report = await trio.to_thread.run_sync(cli_verify, event_id, node_url, rpc, deployment)
            if code == 0:
                return report
            await trio.sleep(1.0)


async def _register_mapped_charger(net: dict[str, Any]) -> None:
    """A second charger with coordinates in its on-chain location, booted and Available."""
    anvil = net["anvil"]
    w3 = connect(anvil.url)
    deployment = Deployment.load(net["deployment_path"])
    manager = ChainClient(w3, deployment, TransactionSender(w3, anvil.dev_keys[1]))
    await trio.to_thread.run_sync(lambda: create_device(manager, MAPPED_CHARGER, MAPPED_PASSWORD, connectors=2,
                                                        price_per_kwh=450_000, location=MAPPED_LOCATION,
                                                        max_power_w=150_000))
    with trio.fail_after(60):
        while True:  # the nodes see the registration once they agree on a later Ethereum block
            try:
                async with connect_demo_charger(net["nodes"][0].ocpp_url, MAPPED_CHARGER,
                                                MAPPED_PASSWORD) as charger:
                    reply = await charger.boot(1)
                    if reply.get("status") == "Accepted":
                        await charger.call("StatusNotification", {"connectorId": 2, "errorCode": "NoError",
                                                                  "status": "Faulted"})
                        return
            except Exception:  # refused while the nodes do not know the charger yet
                pass
            await trio.sleep(1.0)


async def test_explorer_pages_and_in_browser_audit(network: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    nodes, anvil, deployment_path = network["nodes"], network["anvil"], network["deployment_path"]
    anchor = Deployment.load(deployment_path).anchor.lower()
    await _register_mapped_charger(network)
    async with connect_demo_charger(nodes[1].ocpp_url, DEMO_CHARGER, DEMO_PASSWORD, demo_meter_key()) as charger:
        await charger.charge_session(DEMO_ID_TAG, connector=1, meter_start_wh=2_000, meter_stop_wh=9_500)
    session_id = network["seeded"]["session_id"]
    settled = await _settled(network["seeded"]["driver_client"], session_id)
    assert settled.energy_wh == 7_500
    sid = "0x" + session_id.hex()
    web = nodes[2].http_url
    with trio.fail_after(60):
        while True:
            readings = await trio.to_thread.run_sync(_get_json, f"{web}/v1/sessions/{sid}/readings")
            if all(readings["proofs"].values()):
                break
            await trio.sleep(1.0)
    # the signed reading whose Merkle proof is longest (a tampered sibling then has a path to break)
    event_id = max(readings["proofs"], key=lambda e: (len(readings["proofs"][e]["proof"]), e))
    cli = await _anchored(event_id, web, anvil.url, deployment_path)
    event_height = (await trio.to_thread.run_sync(_get_json, f"{web}/v1/events/{event_id}/proof"))["block"]["height"]

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t, 2)

    def run_browser() -> None:
        from selenium.webdriver.common.by import By

        with urllib.request.urlopen(f"{web}/explorer/", timeout=10) as answer:  # what the browser is told
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        with browser(tmp_path) as driver:
            base = f"{web}/explorer/"
            timed("network", lambda: open_page(driver, base + "#/", lambda d: len(
                d.find_elements(By.CSS_SELECTOR, "#validators tbody tr")) == len(nodes)))
            assert int(text_of(driver, "#height")) >= event_height
            assert "blocks/s" in text_of(driver, "#block-rate")
            assert all(f"0x{n.keys.validator.address.hex()}" in text_of(driver, "#validators") for n in nodes)
            assert text_of(driver, "#anchors")
            shoot(driver, "network")

            timed("chargers", lambda: open_page(driver, base + "#/chargers"))
            listing = text_of(driver, "#chargers")
            assert DEMO_CHARGER in listing and MAPPED_CHARGER in listing and "Depot Mitte" in listing
            assert "Available" in listing and "Faulted" in listing and "0.450000 DCT / kWh" in listing
            pins = driver.execute_script(  # read in one go: the list re-renders while we look
                "return [...document.querySelectorAll('svg.map a.pin')].map(a => a.textContent)")
            assert len(pins) == 1 and "Depot Mitte" in pins[0]
            assert re.search(r"\d+ (m|km)", text_of(driver, "#map-scale"))
            shoot(driver, "chargers")

            timed("charger", lambda: open_page(driver, base + f"#/charger/{DEMO_CHARGER}"))
            assert "0.300000 DCT per kWh" in text_of(driver, "#charger")
            assert sid[:10] in text_of(driver, "#sessions")
            shoot(driver, "charger")

            timed("session", lambda: open_page(driver, base + f"#/session/{sid}", lambda d: re.search(  # settled on chain
                r"Settlement transaction\s+0x[0-9a-f]{64}", text_of(d, "#receipt")) is not None))
            receipt = text_of(driver, "#receipt")
            amount = min(7_500 * DEMO_PRICE_PER_KWH // 1000, DEMO_DEPOSIT)
            assert "7.500 kWh" in receipt and f"{amount / 10**6:.6f} DCT" in receipt, receipt
            assert DEMO_CHARGER in receipt and sid in receipt and "0.300000 DCT per kWh" in receipt
            tx = re.search(r"Settlement transaction\s+(0x[0-9a-f]{64})", receipt)
            assert tx, receipt
            assert "verify this event" in text_of(driver, "#readings")
            shoot(driver, "session")
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
            shoot(driver, "receipt-print")
            assert not driver.find_element(By.CSS_SELECTOR, "header.top").is_displayed()
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
            (SHOTS / "receipt.pdf").write_bytes(base64.b64decode(driver.print_page()))

            timed("block", lambda: open_page(driver, base + f"#/block/{event_height}"))
            assert "(matches)" in text_of(driver, "#recomputed-hash")
            assert "verify this event" in text_of(driver, "#payloads")
            open_page(driver, base + f"#/block/{event_height}?rpc={anvil.url}&anchor={anchor}")
            assert text_of(driver, "#certificate").startswith("PASS  commit certificate"), text_of(driver, "#certificate")
            shoot(driver, "block")

            query = f"?rpc={anvil.url}&anchor={anchor}"
            timed("verify", lambda: open_page(driver, base + f"#/verify/{event_id}{query}"))
            verdict, checks = text_of(driver, "#verdict"), text_of(driver, "#checks")
            assert verdict.startswith("VERDICT: VALID"), (verdict, checks)
            browser_names = re.findall(r"^PASS  ([^:]+):", checks, re.MULTILINE)
            assert browser_names == [c["name"] for c in cli["checks"]], (browser_names, cli["checks"])
            assert "FAIL" not in checks
            shoot(driver, "verify-valid")

            # A hostile node: one byte of its JSON altered; the browser notices and says why.
            proxy = TamperProxy(web)
            try:
                cases: list[tuple[str, Callable[[str, Any], Any], str]] = [
                    ("event-bytes", lambda path, doc: {**doc, "event_bytes": flip_hex(doc["event_bytes"], 200)}
                     if path.endswith("/proof") else doc, "event id"),
                    ("proof", lambda path, doc: ({**doc, "proof": [flip_hex(doc["proof"][0], 5), *doc["proof"][1:]]}
                     if doc["proof"] else {**doc, "batch": {**doc["batch"], "root": flip_hex(doc["batch"]["root"], 5)}})
                     if path.endswith("/proof") else doc, "merkle proof (local)"),
                    ("certificate", lambda path, doc: {**doc, "certificate": {**doc["certificate"], "signatures": [
                        flip_hex(doc["certificate"]["signatures"][0], 10), *doc["certificate"]["signatures"][1:]]}}
                     if path.endswith("/proof") else doc, "commit certificate"),
                    ("ancestor-block", lambda path, doc: {**doc, "block": {**doc["block"], "app_header": flip_hex(
                        doc["block"]["app_header"], 20)}} if path == f"/v1/blocks/{event_height - 1}" else doc,
                     "vouch"),
                ]
                for name, tamper, failing in cases:
                    proxy.tamper = tamper
                    open_page(driver, f"{proxy.url}/explorer/#/verify/{event_id}{query}&case={name}")
                    verdict, checks = text_of(driver, "#verdict"), text_of(driver, "#checks")
                    assert verdict.startswith("VERDICT: INVALID"), (name, verdict, checks)
                    assert re.search(rf"^FAIL  {re.escape(failing)}:", checks, re.MULTILINE), (name, checks)
                    assert "Reason:" in verdict
                    shoot(driver, f"verify-invalid-{name}")
            finally:
                proxy.close()

        (SHOTS / "timings.json").write_text(json.dumps({"page_seconds": timings}, indent=2) + "\n")

    await trio.to_thread.run_sync(run_browser)
    print(json.dumps({"page_seconds": timings, "browser_total_s": round(time.perf_counter() - started, 1)}))
