"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (.ci/setup.d/browser.sh installs both; CI runs this test, where a skip is a failure).

Each main page (the monitoring checks' among them) must load without a console error, the lineage graph and
the plots must render (images decoded: naturalWidth > 0), and ticking two runs and pressing "Compare" must
show their comparison.
Screenshots of the main pages go to $BRANCHOPS_ARTIFACTS (default build/artifacts/ui), whose path is
printed, for CI to keep."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.foundation.record_history import FIRST_VERSION

pytestmark = pytest.mark.browser

CHROMEDRIVER = Path("/usr/bin/chromedriver")
MODEL_2 = FIRST_VERSION + 2


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")
    binary = chromium()
    if binary is None or not CHROMEDRIVER.exists():
        pytest.skip("Chromium and chromedriver are not installed: run .ci/setup.d/browser.sh as root")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    # every console message, so that a page's errors can be read back
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system chromedriver, never one Selenium Manager would download (no internet in CI)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("BRANCHOPS_ARTIFACTS") or REPO_ROOT / "build" / "artifacts") / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def visit(browser, url: str) -> None:
    """Load ``url`` and wait until the page and its images are loaded; its console must hold no error."""
    browser.get(url)
    browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const pending = [...document.images].filter(img => !img.complete)
            .map(img => new Promise(ok => { img.onload = img.onerror = ok; }));
        Promise.all(pending).then(() => done(true));"""
    )
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], f"{url}: console errors {severe}"


def images_decoded(browser) -> list[tuple[str, int]]:
    return browser.execute_script(
        "return [...document.querySelectorAll('img.plot')]"
        ".map(img => [img.getAttribute('src'), img.naturalWidth]);"
    )


def screenshot(browser, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    # the whole page, not only the window: the body's size
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, min(int(height) + 40, 4000)))
    browser.save_screenshot(str(path))
    browser.set_window_size(1400, 1000)
    assert path.stat().st_size > 0
    return path


def test_main_pages_in_chromium(browser, dashboard, artifacts: Path, capsys) -> None:
    from selenium.webdriver.common.by import By

    from tests.ui.conftest import MONITOR_CHECKS
    from tests.ui.test_dashboard import runs_of, runs_of_monitor

    base = dashboard.url.rstrip("/")
    shots = []

    visit(browser, f"{base}/")
    for stage in ("build-components", "kf-pipeline", "training", "deploy-model"):
        assert browser.find_element(By.ID, f"stage-{stage}").find_elements(By.CSS_SELECTOR, "tbody tr")
    assert str(MODEL_2) in browser.find_element(By.ID, "serving-now").text
    # what serves now, with the newest monitoring check's drift per feature and the open retraining request
    drift = browser.find_element(By.ID, "monitoring-now")
    assert len(drift.find_elements(By.CSS_SELECTOR, "table.drift tbody tr")) == len(MONITOR_CHECKS[-1]) + 1
    assert [cell.text for cell in drift.find_elements(By.CSS_SELECTOR, "tr.feature td.over")] == [
        "0.47",
        "1e-07",
    ]
    assert drift.find_element(By.ID, "drift-streak").text == "2"
    assert "is open" in drift.find_element(By.ID, "retrain-mr").text
    shots.append(screenshot(browser, artifacts, "overview"))

    # the monitoring checks, newest first, and the newest one's drift and live metric plots
    visit(browser, f"{base}/monitoring")
    rows = browser.find_elements(By.CSS_SELECTOR, "#checks tbody tr")
    assert [r.get_attribute("data-check") for r in rows] == runs_of_monitor(dashboard.repo)[::-1]
    plots = images_decoded(browser)
    assert len(plots) == 2 and all(width > 0 for _, width in plots), plots
    shots.append(screenshot(browser, artifacts, "monitoring"))

    # a training run: its metrics and its two plots, decoded from the PNGs the dashboard reads out of git
    training_runs = runs_of(dashboard.repo, "training")
    visit(browser, f"{base}/runs/training/{training_runs[-1]}")
    plots = images_decoded(browser)
    assert len(plots) == 2 and all(width > 0 for _, width in plots), plots
    shots.append(screenshot(browser, artifacts, "training-run"))

    # the lineage graph of the serving model: drawn, with its chain and its deployments
    visit(browser, f"{base}/models/{MODEL_2}")
    graph = browser.find_element(By.CSS_SELECTOR, "svg.lineage")
    assert graph.size["width"] > 600 and graph.size["height"] > 50
    nodes = graph.find_elements(By.CSS_SELECTOR, "g.node")
    assert {n.get_attribute("data-node") for n in nodes} >= {
        "commit",
        "config",
        "pipeline",
        "data",
        "run",
        "model",
    }
    assert len(graph.find_elements(By.CSS_SELECTOR, "g.node-rollback")) == 1
    assert all(n.size["width"] > 0 for n in nodes)
    shots.append(screenshot(browser, artifacts, "lineage"))

    # select two runs on the training page and compare them
    visit(browser, f"{base}/stages/training")
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=run]")
    assert len(boxes) == 2
    for box in boxes:
        box.click()
    browser.find_element(By.ID, "compare-button").click()
    visit(browser, browser.current_url)
    assert "/compare?" in browser.current_url
    table = browser.find_element(By.ID, "comparison")
    for run_id in training_runs:
        assert run_id in table.text
    roc = table.find_element(By.CSS_SELECTOR, "tr[data-metric=roc_auc]").text
    assert "0.58" in roc and "0.63" in roc and "+0.05" in roc
    plots = images_decoded(browser)  # each run's two, and both runs' curves overlaid
    assert len(plots) == 5 and all(width > 0 for _, width in plots), plots
    shots.append(screenshot(browser, artifacts, "compare"))

    with capsys.disabled():
        print(f"\ndashboard screenshots: {artifacts} ({', '.join(p.name for p in shots)})")
