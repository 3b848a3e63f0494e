"""The web console in a real headless Chromium (selenium): log in through the ``#key=`` fragment,
submit a job through the form, wait for the finished video to play, save a screenshot."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.settings import Settings
from tests.gateway_server import make_key, running_gateway

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
COORDINATOR_COPY = Path("/work/wt/gateway-console.png")


@pytest.fixture(scope="module")
def gateway(stack: Settings, workers: dict) -> Iterator[str]:
    with running_gateway(stack) as url:
        yield url


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium + chromium-driver (apt-get install chromium chromium-driver; "
                           "scripts/setup installs them as root)")
def test_console_submits_and_plays(stack: Settings, gateway: str, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    key = make_key(stack, "default")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    shot = tmp_path / "gateway-console.png"
    try:
        driver.get(f"{gateway}/#key={key}")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.execute_script("return localStorage.getItem('videogen.apikey')") == key)
        assert "key=" not in driver.current_url  # the key leaves the address bar
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#model option[value='tiny-wan-i2v']")))
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a lighthouse in a storm, from the console")
        driver.find_element(By.ID, "num_frames").send_keys("17")
        driver.find_element(By.ID, "steps").send_keys("2")
        driver.find_element(By.ID, "size").send_keys("96x64")
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 15).until(
            lambda d: d.find_element(By.ID, "formmsg").text.startswith("created video_"))
        video_id = driver.find_element(By.ID, "formmsg").text.removeprefix("created ")
        row = f"#job-{video_id}"
        WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        # the live list: a progress bar and the state badge while it runs, then the player
        WebDriverWait(driver, 240).until(lambda d: d.execute_script(
            f"const v = document.querySelector('{row} video');"
            "return v !== null && v.readyState >= 2 && v.currentTime > 0;"))
        state = driver.execute_script(
            f"const v = document.querySelector('{row} video');"
            "return {w: v.videoWidth, h: v.videoHeight, src: v.currentSrc, t: v.currentTime,"
            f" status: document.querySelector('{row}').dataset.status,"
            f" bar: document.querySelector('{row} .bar > div').style.width}};")
        assert state["status"] == "completed" and state["bar"] == "100%"
        assert (state["w"], state["h"]) == (96, 64)
        assert "X-Amz-Signature" in state["src"]  # played straight from the presigned S3 URL
        meta = driver.find_element(By.CSS_SELECTOR, f"{row} .meta").text
        assert "17 frames" in meta and "96x64" in meta
        time.sleep(0.5)
        driver.save_screenshot(str(shot))
        print(f"console screenshot: {shot}")
        try:
            shutil.copyfile(shot, COORDINATOR_COPY)
            print(f"copied to {COORDINATOR_COPY}")
        except OSError:
            pass
    finally:
        if not shot.exists():
            driver.save_screenshot(str(shot))
            print(f"console screenshot (failure): {shot}")
        driver.quit()
