"""The web studio's Batches pages (issue 15.1) in headless chromium, in the style of tests/test_studio.py (whose
`app` and `browser` fixtures this module reuses: one `videostudio serve` and one `videostudio up` on a temp bucket).

A CSV batch posted to the API (three tiny renders, one bad row) is listed on #/batches with its progress; its
page lists the items by line, the bad row with its error code, and each item links to its job's page. Both
pages pass axe-core's WCAG 2.1 A/AA rules and do not scroll sideways at desktop and phone sizes.
"""

from __future__ import annotations

import httpx
import pytest

from batch_jobs import tiny_csv
from core.batch_store import item_job_id
from test_studio import TOKEN, app, artifacts, axe_violations, browser, ensure_signed_in  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_batches_pages_show_progress_items_by_line_and_link_to_jobs(app, browser):  # noqa: F811
    base, driver = app["base"], browser.driver
    response = httpx.post(f"{base}/batches", params={"name": "studio"}, content=tiny_csv(3, bad={1: "oops,x,4.5"}),
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}, timeout=30)
    assert response.status_code == 201, response.text
    batch_id = response.json()["batch_id"]
    ensure_signed_in(browser, base)
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/batches"]').click()
    row = f'#batches tr[data-batch="{batch_id}"]'
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-status="completed"]')), timeout=180)
    assert driver.find_element(By.CSS_SELECTOR, f"{row} progress").get_attribute("value") == "1"
    assert "2 ok · 1 failed" in driver.find_element(By.CSS_SELECTOR, row).text
    browser.shot("batches")

    driver.find_element(By.CSS_SELECTOR, f'{row} a[href="#/batches/{batch_id}"]').click()
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#batch-items tbody tr")))
    lines = [r.get_attribute("data-line") for r in driver.find_elements(By.CSS_SELECTOR, "#batch-items tbody tr")]
    assert lines == ["3", "4", "5"]  # the defaults line and the header come first
    bad = driver.find_element(By.CSS_SELECTOR, '#batch-items tr[data-line="4"]')
    assert bad.get_attribute("data-status") == "failed" and "invalid_field_type" in bad.text
    assert driver.find_element(By.ID, "batch-cancel").is_displayed() is False  # it has ended
    browser.shot("batch")
    driver.find_element(By.CSS_SELECTOR, '#batch-items tr[data-line="3"] a').click()
    browser.wait(EC.presence_of_element_located((By.ID, "stages")))
    assert driver.current_url.endswith(f"#/jobs/{item_job_id(batch_id, 0)}")

    found = {}
    try:
        for width, height in ((1280, 800), (390, 844)):
            driver.set_window_size(width, height)
            for name, route, ready in (("batches", "#/batches", "batches"),
                                       ("batch", f"#/batches/{batch_id}", "batch-items")):
                driver.get(f"{base}/{route}")
                browser.wait(EC.presence_of_element_located((By.ID, ready)))
                overflow = driver.execute_script("return document.documentElement.scrollWidth")
                assert overflow <= width + 1, f"{name} scrolls sideways at {width} px ({overflow} px)"
                found[f"{name}@{width}"] = axe_violations(browser)
    finally:
        driver.set_window_size(1280, 800)
    assert {page: v for page, v in found.items() if v} == {}
    browser.assert_same_origin(base)
