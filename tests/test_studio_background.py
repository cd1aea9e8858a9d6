"""Create video's Background choice in headless chromium, in the style of tests/test_studio.py (whose `app` and
`browser` fixtures this module reuses, as tests/test_studio_batches.py does: one `videostudio serve` and one
`videostudio up` on a temp bucket).

- Colour #0b5fff behind a tiny Mochi prompt: the job runs prepare → render → compose; the tiny model renders
  random noise, so compose really fails with `no_person_found`, and the job page says so on the stage and the job.
  The brief the server recorded (`request.background`, and the brief file in inbox/) is what was chosen.
- Image with a key the bucket does not hold: `background_not_found` is marked on the key's field and no job is made;
  the same through a recording's upload (POST /briefs/speech with `background.image`), which keeps nothing.
- A compose job on real footage: its page plays the composed video and offers the matte for download.
- Every background choice has labelled controls, keeps its keyboard order, and passes axe-core's WCAG 2.1 A/AA
  rules at desktop and phone sizes.
"""

from __future__ import annotations

import subprocess

import httpx
import pytest
import yaml

from real_media import media_file
from schemas.background import ColorBackground
from test_studio import (  # noqa: F401  (fixtures)
    TOKEN, app, artifacts, assert_labelled, axe_violations, browser, ensure_signed_in, fill)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHAPES = ("color", "blur", "image", "video", "matte")


def open_create(browser, base: str) -> None:
    ensure_signed_in(browser, base)
    browser.driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/new"]').click()
    browser.wait(EC.element_to_be_clickable((By.ID, "prompt")))


def tiny_prompt(browser, prompt: str) -> None:
    """A Mochi prompt on the tiny model, small and short: it renders noise in seconds on a CPU."""
    fill(browser, {"prompt": prompt, "preset": "fast", "model": "tiny", "width": "64", "height": "48",
                   "duration": "0.5", "seed": "7"})


def choose(browser, shape: str) -> None:
    browser.driver.find_element(By.CSS_SELECTOR, f'#background input[name="background"][value="{shape}"]').click()


def shown_parts(browser) -> list[str]:
    return [shape for shape in SHAPES
            if browser.driver.find_element(By.ID, f"background-{shape}-part").is_displayed()]


def active_id(browser) -> str:
    return browser.driver.execute_script("return document.activeElement.id")


def press(driver, key: str) -> None:
    """A key press on whatever has the focus (as a person would: not aimed at an element)."""
    ActionChains(driver).send_keys(key).perform()


def jobs(base: str) -> list[str]:
    return sorted(j["job_id"] for j in httpx.get(f"{base}/jobs", params={"limit": 500}, headers=AUTH).json())


def submit(browser) -> None:
    browser.driver.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()


def test_a_colour_background_composes_after_a_tiny_render_and_fails_with_no_person_found(app, browser):  # noqa: F811
    base, driver = app["base"], browser.driver
    open_create(browser, base)
    tiny_prompt(browser, "A lighthouse at dusk, on brand blue")
    assert shown_parts(browser) == []  # None is the default
    # From the keyboard: the arrow key moves the choice from None to Colour, and Tab goes on to its controls.
    none = driver.find_element(By.CSS_SELECTOR, '#background input[value=""]')
    assert none.is_selected()
    driver.execute_script("arguments[0].focus()", none)
    press(driver, Keys.ARROW_RIGHT)
    browser.wait(lambda d: shown_parts(browser) == ["color"])
    assert driver.find_element(By.CSS_SELECTOR, '#background input[value="color"]').is_selected()
    assert driver.switch_to.active_element.get_attribute("value") == "color"
    press(driver, Keys.TAB)
    assert active_id(browser) == "background-picker"
    press(driver, Keys.TAB)
    assert active_id(browser) == "background-color"
    press(driver, Keys.TAB)
    assert active_id(browser) == "seed"
    # The picker and the hex text follow each other.
    picker, hex_text = driver.find_element(By.ID, "background-picker"), driver.find_element(By.ID, "background-color")
    driver.execute_script("const p = arguments[0]; p.value = '#112233'; p.dispatchEvent(new Event('input'));", picker)
    assert hex_text.get_attribute("value") == "#112233"
    fill(browser, {"background-color": "#0b5fff"})
    assert picker.get_attribute("value") == "#0b5fff"
    assert hex_text.get_attribute("aria-invalid") is None
    assert_labelled(browser)
    browser.shot("create-background-colour")
    submit(browser)
    browser.wait(lambda d: d.current_url.split("#", 1)[-1].startswith("/jobs/"))
    job_id = driver.current_url.split("#/jobs/", 1)[1].split("?", 1)[0]

    # The compose stage is in the timeline like any other, and the job fails there, saying why.
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, '#stages li[data-stage="compose"]')))
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-failed")), timeout=240)
    stages = {li.get_attribute("data-stage"): li for li in driver.find_elements(By.CSS_SELECTOR, "#stages > li")}
    assert list(stages) == ["prepare", "render", "compose"]
    assert [li.get_attribute("data-status") for li in stages.values()] == ["succeeded", "succeeded", "failed"]
    assert "no_person_found" in stages["compose"].find_element(By.CSS_SELECTOR, "p.error").text
    assert "no_person_found" in driver.find_element(By.ID, "job-error").text
    browser.shot("job-compose-no-person")

    manifest = httpx.get(f"{base}/jobs/{job_id}", headers=AUTH).json()
    assert (manifest["status"], manifest["error"]["code"]) == ("failed", "no_person_found")
    assert manifest["stages"]["compose"]["error"]["code"] == "no_person_found"
    # What the server recorded is what was chosen: the brief as sent, and the validated request.
    brief = yaml.safe_load((app["bucket"] / manifest["input"]["key"]).read_text())
    assert brief["background"] == {"color": "#0b5fff"}
    assert brief["prompt"] == "A lighthouse at dusk, on brand blue" and brief["model"] == "tiny"
    assert manifest["request"]["background"] == ColorBackground(color="#0b5fff").model_dump(mode="json")
    browser.assert_same_origin(base)


def test_an_image_the_bucket_does_not_hold_is_marked_on_its_field_and_makes_no_job(app, browser):  # noqa: F811
    base, driver = app["base"], browser.driver
    before, inbox = jobs(base), sorted((app["bucket"] / "inbox").glob("*"))
    open_create(browser, base)
    tiny_prompt(browser, "A lighthouse before a photo")
    choose(browser, "image")
    assert shown_parts(browser) == ["image"]
    # No key: the schema's rule, in the page, before anything is sent.
    submit(browser)
    error = browser.wait(EC.visibility_of_element_located((By.ID, "background-image-error")))
    assert "image is required" in error.text
    assert active_id(browser) == "background-image"
    assert "#/new" in driver.current_url
    # A key the bucket does not hold: the server's background_not_found, on the same field.
    fill(browser, {"background-image": "uploads/backdrops/not-there.png", "background-fit": "contain"})
    browser.wait(EC.invisibility_of_element_located((By.ID, "background-image-error")))
    submit(browser)
    browser.wait(lambda d: "background_not_found" in d.find_element(By.ID, "background-image-error").text)
    key = driver.find_element(By.ID, "background-image")
    assert key.get_attribute("aria-invalid") == "true" and active_id(browser) == "background-image"
    assert "uploads/backdrops/not-there.png" in driver.find_element(By.ID, "background-image-error").text
    assert driver.find_element(By.ID, "create-errors").is_displayed() is False  # the field took it
    assert "#/new" in driver.current_url
    assert_labelled(browser)
    browser.shot("create-background-not-found")
    assert jobs(base) == before and sorted((app["bucket"] / "inbox").glob("*")) == inbox
    # Video with a clip the bucket does not hold is refused the same way (a recording's upload sends the same
    # `background.video` field to POST /briefs/speech: tests/test_api_forms.py).
    choose(browser, "video")
    fill(browser, {"background-video": "uploads/backdrops/not-there.mp4"})
    submit(browser)
    browser.wait(lambda d: "background_not_found" in d.find_element(By.ID, "background-video-error").text)
    assert jobs(base) == before
    browser.assert_same_origin(base)


def test_a_recordings_upload_sends_the_background_and_its_refusal_is_marked_on_its_field(app, browser, tmp_path):  # noqa: F811
    """Talking avatar + recording: the page sends `background.image` as a dotted multipart field to POST
    /briefs/speech, which refuses the missing image before keeping the upload."""
    from core.avatars import AvatarRegistry
    from core.storage import LocalStorage
    from schemas.avatar import AvatarManifest

    base, driver = app["base"], browser.driver
    storage = LocalStorage(app["bucket"])
    weights = "jobs/train-tom-0000000000000000/train/wav2lip.pth"  # only the avatar's record is read here
    storage.put_bytes(weights, b"weights")
    AvatarRegistry(storage).deploy(AvatarManifest(avatar_id="tom", job_id="train-tom-0000000000000000",
                                                  backend="wav2lip", base_model="wav2lip", talks=True,
                                                  weights_key=weights), weights)
    take = tmp_path / "take.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media_file("speech-en.wav")), "-t", "2", str(take)], check=True)
    before = jobs(base)
    open_create(browser, base)
    driver.find_element(By.CSS_SELECTOR, '#mode input[value="talking"]').click()
    fill(browser, {"talking-avatar": "tom"})
    driver.find_element(By.CSS_SELECTOR, '#speech-source input[value="audio"]').click()
    driver.find_element(By.ID, "audio-file").send_keys(str(take))
    choose(browser, "image")
    fill(browser, {"background-image": "uploads/backdrops/not-there.png"})
    submit(browser)
    browser.wait(lambda d: "background_not_found" in d.find_element(By.ID, "background-image-error").text)
    assert driver.find_element(By.ID, "background-image").get_attribute("aria-invalid") == "true"
    assert "#/new" in driver.current_url and jobs(base) == before
    assert storage.list_keys("uploads/tom/") == []  # the recording was not kept
    browser.shot("create-background-upload-refused")
    browser.assert_same_origin(base)


def test_a_compose_jobs_page_plays_the_composed_video_and_offers_the_matte(app, browser):  # noqa: F811
    """Real footage (a person talking), composed over #0b5fff by the module's worker."""
    base, driver = app["base"], browser.driver
    clip = app["bucket"] / "uploads" / "studio" / "talk.mp4"
    clip.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_file("talking-1.mp4")), "-t", "1.5",
                    "-vf", "scale=192:-2", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(clip)],
                   check=True)
    response = httpx.post(f"{base}/briefs", params={"name": "studio-compose"}, headers={
        **AUTH, "Content-Type": "application/yaml"},
        content=b"kind: compose\nvideo: uploads/studio/talk.mp4\nbackground: {color: '#0b5fff'}\n", timeout=30)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    ensure_signed_in(browser, base)
    driver.get(f"{base}/#/jobs/{job_id}?play")
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-succeeded")), timeout=240)
    stages = [li.get_attribute("data-stage") for li in driver.find_elements(By.CSS_SELECTOR, "#stages > li")]
    assert stages == ["prepare", "compose"]
    video = browser.wait(EC.presence_of_element_located((By.ID, "video")))
    assert video.get_attribute("src") == f"{base}/jobs/{job_id}/outputs/video"
    browser.wait(lambda d: d.execute_script("const v = document.getElementById('video'); return v.readyState >= 1;"))
    assert driver.execute_script("return document.getElementById('video').duration") > 1
    link = driver.find_element(By.CSS_SELECTOR, "#matte a")
    assert link.get_attribute("href") == f"{base}/jobs/{job_id}/outputs/matte"
    assert link.get_attribute("download") is not None and link.text == "Download the matte"
    manifest = httpx.get(f"{base}/jobs/{job_id}", headers=AUTH).json()
    assert manifest["outputs"]["video"].startswith(f"jobs/{job_id}/compose/")
    matte = httpx.get(link.get_attribute("href"), headers=AUTH)
    assert matte.status_code == 200 and matte.headers["content-type"] == "video/mp4" and len(matte.content) > 1000
    assert_labelled(browser)
    browser.shot("job-composed")
    found = axe_violations(browser)
    assert found == []
    browser.assert_same_origin(base)


def test_every_background_choice_is_labelled_and_meets_wcag_aa(app, browser):  # noqa: F811
    base, driver = app["base"], browser.driver
    found = {}
    try:
        for width, height in ((1280, 800), (390, 844)):
            driver.set_window_size(width, height)
            open_create(browser, base)
            for mode in ("prompt", "talking"):
                driver.find_element(By.CSS_SELECTOR, f'#mode input[value="{mode}"]').click()
                for shape in SHAPES:
                    choose(browser, shape)
                    assert shown_parts(browser) == [shape]
                    assert_labelled(browser)
                    overflow = driver.execute_script("return document.documentElement.scrollWidth")
                    assert overflow <= width + 1, f"{mode}/{shape} scrolls sideways at {width} px ({overflow} px)"
                    found[f"{mode}-{shape}@{width}"] = axe_violations(browser)
            # With an inline error showing (its contrast too).
            driver.find_element(By.CSS_SELECTOR, '#mode input[value="prompt"]').click()
            choose(browser, "blur")
            fill(browser, {"background-blur": "0"})
            error = browser.wait(EC.visibility_of_element_located((By.ID, "background-blur-error")))
            assert "more than 0" in error.text
            found[f"blur-error@{width}"] = axe_violations(browser)
            browser.shot(f"create-background-{width}")
    finally:
        driver.set_window_size(1280, 800)
    assert {page: v for page, v in found.items() if v} == {}
