"""The browser page in headless Chromium: it lists the models, sends an inference through the
form, shows the result, and its live view follows the traffic, a language model's tokens too.

Needs Debian's `chromium` and `chromium-driver` (installed by `make test` when run as root).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server, serving

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian packages chromium and chromium-driver (make test installs them as root)",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_sends_an_inference_and_the_live_view_updates(
    server: Server, browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
    browser.get(f"http://{server.http_url}/")
    row = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, '#models tr[data-model="add_sub"]'))
    )
    assert "tensorgate" in browser.find_element(By.ID, "server").text
    live_count = (By.CSS_SELECTOR, "#live-add_sub-v1 .count")
    before = int(wait.until(lambda d: d.find_element(*live_count).text))

    row.click()
    wait.until(lambda d: "INPUT0" in d.find_element(By.ID, "request").get_attribute("value"))
    assert '"max_batch_size"' in browser.find_element(By.ID, "config").text
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: "OUTPUT0" in d.find_element(By.ID, "result").text)
    response = json.loads(browser.find_element(By.ID, "result").text)
    outputs = {o["name"]: o["data"] for o in response["outputs"]}
    assert outputs["OUTPUT0"] == [2.0] * 16 and outputs["OUTPUT1"] == [0.0] * 16

    # The next poll of /v2/models/stats shows the request in the live view.
    wait.until(lambda d: int(d.find_element(*live_count).text) > before)
    assert browser.find_elements(By.CSS_SELECTOR, "#live-add_sub-v1 svg.bars rect")
    screenshot = tmp_path / "browser.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_page_shows_a_server_error_from_the_form(server: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(f"http://{server.http_url}/")
    wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, '#models tr[data-model="add_sub"]'))
    ).click()
    request = wait.until(ec.presence_of_element_located((By.ID, "request")))
    wait.until(lambda d: "INPUT0" in request.get_attribute("value"))
    request.clear()
    request.send_keys('{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}')
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "result").text)
    result = browser.find_element(By.ID, "result")
    assert "400" in result.text and "neither data nor" in result.text
    assert "error" in result.get_attribute("class")


def test_live_view_shows_a_language_models_tokens_latencies_and_blocks(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("torch")
    import requests
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from tensorgate.examples.tiny_lm import GENERATION_CONFIG, build_tiny_llama

    repo = tmp_path_factory.mktemp("browser_generation")
    build_tiny_llama(repo / "tiny_llama" / "1")
    (repo / "tiny_llama" / "config.pbtxt").write_text(GENERATION_CONFIG)
    with serving(repo, tmp_path_factory) as server:
        wait = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
        browser.get(f"http://{server.http_url}/")
        row = "#gen-tiny_llama-v1"
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .blocks").text)
        assert browser.find_element(By.CSS_SELECTOR, f"{row} .first").text == "\u2013"  # none yet
        body = {"text_input": "Hello", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
        url = f"http://{server.http_url}/v2/models/tiny_llama/generate"
        for _ in range(3):
            reply = requests.post(url, json=body, timeout=60)
            assert reply.status_code == 200, reply.text

        def shown(name: str) -> str:
            return str(browser.find_element(By.CSS_SELECTOR, f"{row} .{name}").text)

        # The next poll shows the 120 tokens, and the latencies measured since the last one.
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-generated") == "120"
        )
        assert shown("first").endswith(" ms") and shown("inter").endswith(" ms")
        assert shown("sequences") == "0 / 0"
        used, total = (int(n) for n in shown("blocks").split(" / "))
        assert used == 0 and total > 0
        assert shown("prefix").endswith("%")  # the prompts were looked up in the cache


def test_page_asks_for_a_token_and_then_shows_the_models(
    test_repository: Path, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import secrets

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    token = secrets.token_urlsafe(16)
    tokens = tmp_path_factory.mktemp("browser_auth") / "tokens.txt"
    tokens.write_text(token + "\n")
    with serving(test_repository, tmp_path_factory, "--auth-token-file", str(tokens)) as server:
        wait = WebDriverWait(browser, 20)
        browser.get(f"http://{server.http_url}/")
        wait.until(lambda d: "401" in d.find_element(By.ID, "server").text)
        assert not browser.find_elements(By.CSS_SELECTOR, '#models tr[data-model="add_sub"]')
        browser.find_element(By.ID, "token").send_keys(token, Keys.TAB)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#models tr[data-model="add_sub"]'))
        wait.until(lambda d: d.find_elements(By.ID, "live-add_sub-v1"))
        assert "tensorgate" in browser.find_element(By.ID, "server").text
