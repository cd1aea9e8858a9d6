"""The web studio (issue 13, first slice) in a real browser: Debian's chromium + chromium-driver, driven by selenium.

One `videostudio serve` and one `videostudio up` on a temp bucket for the module; headless chromium signs in
through the page. Journeys: a wrong token is refused and the right one signs in; a Mochi video made from a
prompt (model tiny) plays in the job page and the job is listed as succeeded; a running job is cancelled from
the jobs list; a train job's loss chart is drawn as SVG and gains points as the manifest changes (a second
server, without a worker, on a bucket holding a hand-written train manifest). Every request the browser made
went to the app's own origin. Screenshots land in $VIDEOSTUDIO_STUDIO_ARTIFACTS or a temp folder (printed).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import start_serve, start_up, stop
from schemas.manifest import InputRecord, JobManifest, Versions

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "studio-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 60
UPLOAD_LIMIT = 8_000_000


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("VIDEOSTUDIO_STUDIO_ARTIFACTS") or tmp_path_factory.mktemp("studio-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nstudio screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    # A small upload limit, so that an oversized upload is quick to make; the server's temp files in tmp/.
    (root / "tmp").mkdir()
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1",
           "VIDEOSTUDIO_API_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "TMPDIR": str(root / "tmp")}
    serve, base = start_serve(root, root / "serve.log", env, timeout_s=90)
    worker = start_up(root / "bucket", root / "up.log")
    yield {"base": base, "root": root, "bucket": root / "bucket", "log": root / "serve.log", "tmp": root / "tmp"}
    stop(worker)
    serve.terminate()
    serve.wait(timeout=30)
    assert TOKEN not in (root / "serve.log").read_text(), "the token reached the server's log"


class Browser:
    """A headless chromium whose network log is kept across get_log calls (each call drains it)."""

    def __init__(self, driver, artifacts: Path) -> None:
        self.driver, self.artifacts, self.requests = driver, artifacts, []

    def wait(self, condition, timeout: float = WAIT_S):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def drain_network(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
        return self.requests

    def leave(self) -> None:
        """Close the page (and its event streams) before its server stops, so nothing reconnects later."""
        self.driver.get("about:blank")
        self.drain_network()
        self.requests = []

    def assert_same_origin(self, base: str) -> None:
        urls, self.requests = self.drain_network(), []  # each journey checks its own requests
        assert urls, "no network requests were logged"
        foreign = [u for u in urls if not (u.startswith(base + "/") or u == base or u.startswith(("data:", "blob:")))]
        assert not foreign, f"requests to other origins: {foreign}"


@pytest.fixture(scope="module")
def browser(artifacts):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1280,800", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    except WebDriverException as exc:  # pragma: no cover - set-up problem, reported plainly
        pytest.fail(f"chromium did not start ({CHROMIUM}, {CHROMEDRIVER}): {exc.msg}")
    yield Browser(driver, artifacts)
    driver.quit()


def sign_in(browser: Browser, base: str, token: str = TOKEN) -> None:
    driver = browser.driver
    driver.get(base + "/#/jobs")
    field = browser.wait(EC.element_to_be_clickable((By.ID, "token")))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()


UNLABELLED_JS = """return [...document.querySelectorAll('input, select, textarea, button, progress')]
  .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map((e) => e.outerHTML);"""


def assert_labelled(browser: Browser) -> None:
    assert browser.driver.execute_script(UNLABELLED_JS) == []


def ensure_signed_in(browser: Browser, base: str) -> None:
    """Cookies are per host, not per port: a session from another server on 127.0.0.1 with the same token counts."""
    browser.driver.get(base + "/#/jobs")
    found = browser.wait(EC.any_of(EC.visibility_of_element_located((By.ID, "token")),
                                   EC.visibility_of_element_located((By.ID, "jobs"))))
    if found.get_attribute("id") == "token":
        sign_in(browser, base)
    browser.wait(EC.visibility_of_element_located((By.ID, "jobs")))


def jobs_row(browser: Browser, job_id: str, status: str):
    return browser.wait(EC.presence_of_element_located(
        (By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"][data-status="{status}"]')))


def create_video(browser: Browser, prompt: str, *, steps: int | None = None, size: tuple[int, int] = (64, 48),
                 duration_s: float = 0.5) -> str:
    driver = browser.driver
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/new"]').click()
    browser.wait(EC.element_to_be_clickable((By.ID, "prompt"))).send_keys(prompt)
    assert_labelled(browser)
    Select(driver.find_element(By.ID, "preset")).select_by_value("fast")
    for field, value in (("seed", "7"), ("model", "tiny"), ("width", str(size[0])), ("height", str(size[1])),
                         ("duration", str(duration_s)),
                         ("steps", "" if steps is None else str(steps))):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()
    browser.wait(lambda d: d.current_url.split("#", 1)[-1].startswith("/jobs/"))
    return driver.current_url.split("#/jobs/", 1)[1].split("?", 1)[0]


# --------------------------------------------------------------------------------------------- journeys
def test_sign_in_refuses_a_wrong_token_then_signs_in(app, browser):
    base = app["base"]
    sign_in(browser, base, "not-the-token")
    error = browser.wait(EC.visibility_of_element_located((By.ID, "sign-in-error")))
    assert "not valid" in error.text
    browser.shot("sign-in-error")
    assert_labelled(browser)
    sign_in(browser, base)
    browser.wait(EC.visibility_of_element_located((By.ID, "jobs")))
    cookie = browser.driver.get_cookie("videostudio_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert TOKEN not in cookie["value"]
    assert TOKEN not in browser.driver.current_url
    # The cookie alone may read, but a change needs the CSRF header the page sends.
    jar = {"videostudio_session": cookie["value"]}
    assert httpx.get(f"{base}/jobs", cookies=jar).status_code == 200
    refused = httpx.post(f"{base}/briefs", cookies=jar, content=b"prompt: hi\n",
                         headers={"Content-Type": "application/yaml"})
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_header_missing"
    browser.shot("jobs-empty")
    browser.assert_same_origin(base)


def test_create_a_mochi_video_from_a_prompt_and_play_it(app, browser, artifacts):
    base = app["base"]
    job_id = create_video(browser, "A lighthouse at dusk")
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, '#stages li[data-stage="render"]')))
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-succeeded")), timeout=120)
    video = browser.wait(EC.presence_of_element_located((By.ID, "video")))
    browser.wait(lambda d: d.execute_script(
        "const v = document.getElementById('video'); return v.readyState >= 1 || v.duration > 0;"))
    assert browser.driver.execute_script("return document.getElementById('video').duration") > 0
    stages = [li.get_attribute("data-stage") for li in browser.driver.find_elements(By.CSS_SELECTOR, "#stages > li")]
    assert stages == ["prepare", "render"]
    assert all(li.get_attribute("data-status") == "succeeded"
               for li in browser.driver.find_elements(By.CSS_SELECTOR, "#stages > li"))
    assert video.get_attribute("src") == f"{base}/jobs/{job_id}/outputs/video"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    whole = httpx.get(f"{base}/jobs/{job_id}/outputs/video", headers=auth)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    part = httpx.get(f"{base}/jobs/{job_id}/outputs/video", headers={**auth, "Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole.content[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
    assert httpx.get(f"{base}/jobs/{job_id}/outputs/video", headers={**auth, "Range": "bytes=999999999-"}
                     ).status_code == 416
    assert httpx.get(f"{base}/jobs/{job_id}/outputs/nothing", headers=auth).json()["code"] == "output_not_found"
    browser.shot("job-detail")
    browser.driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/jobs"]').click()
    jobs_row(browser, job_id, "succeeded")
    Select(browser.driver.find_element(By.ID, "filter-status")).select_by_value("failed")
    browser.wait(EC.visibility_of_element_located((By.ID, "jobs-empty")))
    Select(browser.driver.find_element(By.ID, "filter-status")).select_by_value("succeeded")
    Select(browser.driver.find_element(By.ID, "filter-kind")).select_by_value("render")
    jobs_row(browser, job_id, "succeeded")
    browser.shot("jobs")
    assert_labelled(browser)
    # Keyboard: Tab reaches the filters, and the focused control shows an outline.
    focused = browser.driver.execute_script(
        "document.getElementById('filter-kind').focus(); const s = getComputedStyle(document.activeElement);"
        "return [document.activeElement.id, s.outlineStyle, s.outlineWidth];")
    assert focused[0] == "filter-kind" and focused[1] != "none" and focused[2] != "0px", focused
    browser.assert_same_origin(base)


def test_cancel_a_running_job_from_the_jobs_list(app, browser):
    base = app["base"]
    job_id = create_video(browser, "A long render", steps=500, size=(848, 480), duration_s=6)  # minutes on a CPU
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, '#stages li[data-stage="render"][data-status="running"]')),
                 timeout=90)
    browser.driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/jobs"]').click()
    Select(browser.wait(EC.element_to_be_clickable((By.ID, "filter-status")))).select_by_value("")
    Select(browser.driver.find_element(By.ID, "filter-kind")).select_by_value("")
    row = jobs_row(browser, job_id, "running")
    row.find_element(By.CSS_SELECTOR, "progress")
    browser.shot("jobs-running")
    row.find_element(By.CSS_SELECTOR, 'button[data-action="cancel"]').click()
    jobs_row(browser, job_id, "cancelled")
    browser.shot("jobs-cancelled")
    assert httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()["status"] == "cancelled"
    browser.assert_same_origin(base)


def fill(browser: Browser, values: dict[str, str]) -> None:
    for element_id, value in values.items():
        element = browser.driver.find_element(By.ID, element_id)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)


def stage_fraction(browser: Browser, stage: str) -> float | None:
    return browser.driver.execute_script(
        "const p = document.querySelector(`#stages li[data-stage='${arguments[0]}'] progress`);"
        "return p === null ? null : p.value;", stage)


def test_train_a_talking_avatar_from_an_upload_watch_it_learn_and_make_it_talk(app, browser, tmp_path):
    """The issue's main journey, on real footage: upload (tiny wav2lip) → progress and loss chart move live →
    the avatar appears in the gallery → a typed script becomes a talking video that plays with sound."""
    from tests.real_media import looped_talking_video

    base, driver = app["base"], browser.driver
    video = looped_talking_video(tmp_path / "ann.mp4", clip="talking-2.mp4", seconds=32, side=320)
    assert video.stat().st_size < UPLOAD_LIMIT
    ensure_signed_in(browser, base)
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/new-avatar"]').click()
    browser.wait(EC.element_to_be_clickable((By.ID, "avatar-id")))
    fill(browser, {"avatar-id": "ann", "backend": "wav2lip"})
    # the backend's own options show; the other backend's are hidden
    assert driver.find_element(By.ID, "opt-wav2lip-width").is_displayed()
    assert not driver.find_element(By.ID, "opt-lora_rank").is_displayed()
    fill(browser, {"opt-epochs": "1", "opt-batch_size": "48", "opt-mixed_precision": "no",
                   "opt-wav2lip-width": "0.125", "opt-wav2lip-expert_epochs": "2"})
    driver.find_element(By.ID, "video-file").send_keys(str(video))
    assert_labelled(browser)
    browser.shot("new-avatar")
    driver.find_element(By.CSS_SELECTOR, "#new-avatar button[type=submit]").click()
    browser.wait(lambda d: "#/jobs/" in d.current_url, timeout=120)
    job_id = driver.current_url.split("#/jobs/", 1)[1].split("?", 1)[0]
    assert job_id.startswith("train-ann-")
    uploaded = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert uploaded["input"]["key"].startswith("inbox/")

    # Watch: the train stage's bar advances and the chart gains points while it runs.
    fractions, counts = [], []
    def watch(d) -> bool:
        fraction = stage_fraction(browser, "train")
        if fraction is not None and (not fractions or fraction != fractions[-1]):
            fractions.append(fraction)
        count = len(d.find_elements(By.CSS_SELECTOR, "#loss svg circle.point"))
        if count and (not counts or count != counts[-1]):
            counts.append(count)
            if len(counts) == 2:
                browser.shot("train-live")
        return d.find_elements(By.CSS_SELECTOR, "#job p > .s-succeeded, #job p > .s-failed") != []
    browser.wait(watch, timeout=600)
    assert driver.find_elements(By.CSS_SELECTOR, "#job p > .s-succeeded"), driver.find_element(By.ID, "job").text
    running = [f for f in fractions if 0 < f < 1]
    assert len(running) >= 3 and running == sorted(running), fractions
    assert len(counts) >= 3 and counts == sorted(counts), counts  # points came in epoch by epoch, live
    browser.wait(EC.visibility_of_element_located((By.ID, "deploy-status")))
    assert "deployed from this job" in driver.find_element(By.ID, "deploy-status").text
    splits = driver.find_element(By.ID, "splits").text
    assert all(name in splits for name in ("train", "val", "test")), splits
    assert driver.find_element(By.CSS_SELECTOR, "img.sheet").get_attribute("src").endswith("/outputs/contact_sheet")
    browser.shot("train-done")

    # The gallery has it, with its preview and lip-sync metrics.
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/avatars"]').click()
    card = browser.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, '#avatars li[data-avatar="ann"]')))
    assert "wav2lip" in card.text and "Lip-sync offset" in card.text
    browser.wait(lambda d: d.execute_script(
        "const v = document.querySelector('#avatars li[data-avatar=\"ann\"] video'); return v !== null && v.readyState >= 1;"))
    browser.shot("avatars-trained")

    # Make it talk: the card's link opens Create video with the avatar chosen.
    card.find_element(By.LINK_TEXT, "Make it talk").click()
    script = browser.wait(EC.element_to_be_clickable((By.ID, "script")))
    assert driver.find_element(By.ID, "talking-part").is_displayed()
    assert Select(driver.find_element(By.ID, "talking-avatar")).first_selected_option.get_attribute("value") == "ann"
    script.send_keys("Hello from the web studio. This avatar learned to talk in a few minutes.")
    assert "characters" in driver.find_element(By.ID, "script-count").text
    assert_labelled(browser)
    browser.shot("create-talking")
    driver.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()
    browser.wait(lambda d: "#/jobs/" in d.current_url and "train-" not in d.current_url)
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-succeeded")), timeout=300)
    # It plays by itself once done (the page was opened by the submit), sound and all.
    browser.wait(lambda d: d.execute_script(
        "const v = document.getElementById('video');"
        "return v !== null && !v.paused && v.currentTime > 0.2 && v.webkitAudioDecodedByteCount > 0;"), timeout=60)
    browser.shot("talking-video")

    # Or an uploaded recording (3 s of real speech), through POST /briefs/speech with its progress bar.
    import subprocess

    from tests.real_media import media_file

    take = tmp_path / "take.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media_file("speech-en.wav")), "-t", "3", str(take)], check=True)
    driver.get(f"{base}/#/new?avatar=ann")
    browser.wait(EC.element_to_be_clickable((By.ID, "script")))
    driver.find_element(By.CSS_SELECTOR, '#speech-source input[value="audio"]').click()
    driver.find_element(By.ID, "audio-file").send_keys(str(take))
    driver.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()
    browser.wait(lambda d: "#/jobs/speech-ann-" in d.current_url)
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-succeeded")), timeout=300)
    browser.wait(lambda d: d.execute_script(
        "const v = document.getElementById('video'); return v !== null && !v.paused && v.currentTime > 0.2;"), timeout=60)
    assert list((app["bucket"] / "uploads" / "ann" / "speech").iterdir())
    browser.assert_same_origin(base)


def test_an_oversized_upload_is_refused_with_a_clear_message_and_nothing_is_kept(app, browser, tmp_path):
    base, driver = app["base"], browser.driver
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(UPLOAD_LIMIT + 1))
    ensure_signed_in(browser, base)
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/new-avatar"]').click()
    browser.wait(EC.element_to_be_clickable((By.ID, "avatar-id")))
    fill(browser, {"avatar-id": "bigfoot"})
    driver.find_element(By.ID, "video-file").send_keys(str(big))
    message = browser.wait(EC.visibility_of_element_located((By.ID, "video-file-error"))).text
    assert "8.0 MB" in message and "at most" in message, message
    driver.find_element(By.CSS_SELECTOR, "#new-avatar button[type=submit]").click()
    assert driver.find_element(By.ID, "video-file").get_attribute("aria-invalid") == "true"
    assert "#/new-avatar" in driver.current_url
    browser.shot("upload-too-large")
    # The server refuses it too, as the body streams in (a client that skips the page's check): the page's
    # upload code reports its answer, and nothing is kept, in the bucket or in the server's temp folder.
    refused = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/studio/api.js').then(({ upload }) => {
          const form = new FormData();
          form.append('avatar', 'bigfoot');
          form.append('video', new Blob([new Uint8Array(arguments[0])]), 'big.mp4');
          return upload('/train', form, () => {});
        }).then(() => done('accepted'), (err) => done([err.status, err.code, err.message]));""", UPLOAD_LIMIT + 1)
    assert refused[0] in (413, 0) and refused[1] in ("payload_too_large", "upload_interrupted"), refused
    assert not (app["bucket"] / "uploads" / "bigfoot").exists()
    assert list(app["tmp"].iterdir()) == []
    assert not [p for p in (app["bucket"] / "inbox").glob("*bigfoot*")]
    browser.assert_same_origin(base)


def test_invalid_fields_are_marked_inline_in_the_forms_and_the_brief_editor(app, browser):
    base, driver = app["base"], browser.driver
    ensure_signed_in(browser, base)
    # New avatar: the schema's rules as you type.
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/new-avatar"]').click()
    browser.wait(EC.element_to_be_clickable((By.ID, "avatar-id")))
    fill(browser, {"avatar-id": "bad id!", "opt-epochs": "0"})
    browser.wait(EC.visibility_of_element_located((By.ID, "avatar-id-error")))
    assert driver.find_element(By.ID, "avatar-id").get_attribute("aria-invalid") == "true"
    assert "less than 1" in browser.wait(EC.visibility_of_element_located((By.ID, "opt-epochs-error"))).text
    fill(browser, {"opt-epochs": "2"})
    browser.wait(EC.invisibility_of_element_located((By.ID, "opt-epochs-error")))
    browser.shot("new-avatar-invalid")

    # Brief editor: a schema error by line and field, a YAML error by line, the server's own rule by field.
    driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/editor"]').click()
    editor = browser.wait(EC.element_to_be_clickable((By.ID, "brief-text")))
    browser.wait(EC.visibility_of_element_located((By.ID, "brief-ok")))
    editor.clear()
    editor.send_keys("kind: train\navatar: ann\nvideo: uploads/ann/ann.mp4\nepochs: 0\nwav2lip:\n  width: 7\n")
    errors = browser.wait(EC.visibility_of_element_located((By.ID, "brief-errors")))
    browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#brief-errors li")) == 2)
    items = {li.get_attribute("data-path"): li for li in errors.find_elements(By.TAG_NAME, "li")}
    assert set(items) == {"epochs", "wav2lip.width"}
    assert items["epochs"].get_attribute("data-line") == "4" and "less than 1" in items["epochs"].text
    assert items["wav2lip.width"].get_attribute("data-line") == "6"
    assert editor.get_attribute("aria-invalid") == "true"
    driver.execute_script("document.getElementById('brief-errors').scrollIntoView({block: 'center'})")
    browser.shot("brief-editor-invalid")
    driver.find_element(By.CSS_SELECTOR, "#brief-editor button[type=submit]").click()
    assert "#/editor" in driver.current_url  # nothing was sent
    editor.clear()
    editor.send_keys("prompt: [unclosed\n")
    browser.wait(lambda d: "not valid YAML" in d.find_element(By.ID, "brief-errors").text)
    # Both a script and a recording: the schema allows each, the server's rule refuses the pair.
    editor.clear()
    editor.send_keys("avatar: ann\nscript: Hello\naudio: uploads/ann/speech.wav\n")
    browser.wait(EC.visibility_of_element_located((By.ID, "brief-ok")))
    driver.find_element(By.CSS_SELECTOR, "#brief-editor button[type=submit]").click()
    browser.wait(lambda d: "not both" in d.find_element(By.ID, "brief-errors").text)
    assert "#/editor" in driver.current_url
    assert_labelled(browser)
    browser.shot("brief-editor-server-error")

    # And a valid one goes through, YAML as written, to its job page.
    editor.clear()
    editor.send_keys("# from the editor\nprompt: A red kite over a field\nmodel: tiny\nwidth: 64\nheight: 48\n"
                     "duration_s: 0.5\npreset: fast\n")
    browser.wait(EC.visibility_of_element_located((By.ID, "brief-ok")))
    fill(browser, {"brief-name": "kite"})
    driver.find_element(By.CSS_SELECTOR, "#brief-editor button[type=submit]").click()
    browser.wait(lambda d: "#/jobs/kite-" in d.current_url)
    assert (app["bucket"] / "inbox" / "kite.yaml").read_text().startswith("# from the editor\n")
    browser.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#job p > .s-succeeded")), timeout=120)
    browser.assert_same_origin(base)


def test_a_train_jobs_loss_chart_gains_points_live(app, browser, tmp_path):
    """A second server (no worker) on a bucket holding a running train job's manifest, written by hand."""
    job_id = "avatar-0123456789abcdef"
    manifest = json.loads(JobManifest(job_id=job_id, kind="train", status="running",
                                      input=InputRecord(key="inbox/avatar.yaml"),
                                      versions=Versions(videostudio="0", python="3")).model_dump_json())
    manifest["stages"] = {
        "prepare": {"status": "succeeded", "attempts": 1, "metrics": {"frames_kept": 250}},
        "train": {"status": "running", "attempts": 1, "outputs": {},
                  "progress": {"fraction": 0.5, "message": "training the generator", "step": 5, "total": 10},
                  "metrics": {"epoch": 2, "train_loss": [0.9, 0.7], "val_loss": [0.95, None],
                              "expert_history": {"train_loss": [0.69, 0.6], "val_loss": [0.7, 0.62]}}},
    }
    bucket = tmp_path / "bucket"
    (bucket / "jobs" / job_id).mkdir(parents=True)
    path = bucket / "jobs" / job_id / "manifest.json"
    path.write_text(json.dumps(manifest))
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    serve, base = start_serve(tmp_path, tmp_path / "serve.log", env, timeout_s=90)
    try:
        ensure_signed_in(browser, base)
        browser.driver.get(f"{base}/#/jobs/{job_id}")
        points = "#loss svg circle.point"
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, points)) == 7)  # 2 + 1 (a None) + 2 + 2
        assert browser.driver.find_element(By.CSS_SELECTOR, "#loss svg polyline")
        browser.driver.execute_script("document.getElementById('loss').scrollIntoView()")
        browser.shot("train-loss-chart")
        later = copy.deepcopy(manifest)
        later["stages"]["train"]["metrics"]["train_loss"].append(0.5)
        later["stages"]["train"]["metrics"]["val_loss"].append(0.6)
        later["stages"]["train"]["progress"]["fraction"] = 0.8
        # The legend switches a series off (its two points go), and it stays off as new points arrive.
        toggle = browser.driver.find_element(By.CSS_SELECTOR, '#loss button[data-series="expert val loss"]')
        assert toggle.get_attribute("aria-pressed") == "true"
        toggle.click()
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, points)) == 5)
        path.with_suffix(".tmp").write_text(json.dumps(later))
        path.with_suffix(".tmp").replace(path)
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, points)) == 7)
        toggle = browser.driver.find_element(By.CSS_SELECTOR, '#loss button[data-series="expert val loss"]')
        assert toggle.get_attribute("aria-pressed") == "false"
        toggle.send_keys(" ")  # from the keyboard too
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, points)) == 9)
        browser.shot("train-loss-chart-later")
        browser.assert_same_origin(base)
    finally:
        browser.leave()
        serve.terminate()
        serve.wait(timeout=30)


def test_a_failed_job_shows_its_error_and_webhook_attempts_and_is_retried(browser, tmp_path):
    """A second server (no worker) on a bucket holding a failed render's manifest, written by hand."""
    job_id = "broken-0123456789abcdef"
    manifest = json.loads(JobManifest(job_id=job_id, kind="render", status="failed",
                                      input=InputRecord(key="inbox/broken.yaml"),
                                      versions=Versions(videostudio="0", python="3")).model_dump_json())
    error = {"code": "render_crashed", "message": "the renderer stopped at step 3", "retryable": True}
    manifest.update(error=error, stages={
        "prepare": {"status": "succeeded", "attempts": 1},
        "render": {"status": "failed", "attempts": 3, "error": error}})
    manifest["webhooks"] = [{"webhook_id": "msg_1", "event": "job.failed", "url": "https://example.com/hook",
                             "status": "failed", "attempts": [
                                 {"attempt": 1, "at": "2026-01-01T00:00:00Z", "status_code": 500, "duration_ms": 12.5,
                                  "next_retry_s": 2.0},
                                 {"attempt": 2, "at": "2026-01-01T00:00:02Z", "error": "connection refused"}]}]
    bucket = tmp_path / "bucket"
    (bucket / "inbox").mkdir(parents=True)
    (bucket / "inbox" / "broken.yaml").write_text("prompt: hi\nmodel: tiny\n")
    (bucket / "jobs" / job_id).mkdir(parents=True)
    (bucket / "jobs" / job_id / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    serve, base = start_serve(tmp_path, tmp_path / "serve.log", env, timeout_s=90)
    try:
        ensure_signed_in(browser, base)
        browser.driver.get(f"{base}/#/jobs/{job_id}")
        shown = browser.wait(EC.visibility_of_element_located((By.ID, "job-error")))
        assert "render_crashed" in shown.text and "stopped at step 3" in shown.text
        hooks = browser.wait(EC.visibility_of_element_located((By.ID, "webhooks"))).text
        assert "job.failed" in hooks and "#1" in hooks and "500" in hooks and "connection refused" in hooks
        browser.shot("job-failed")
        browser.driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/jobs"]').click()
        row = jobs_row(browser, job_id, "failed")
        row.find_element(By.CSS_SELECTOR, 'button[data-action="retry"]').click()
        jobs_row(browser, job_id, "queued")
        browser.assert_same_origin(base)
    finally:
        browser.leave()
        serve.terminate()
        serve.wait(timeout=30)


def test_the_avatars_gallery_shows_metrics_and_a_preview_and_deletes(browser, tmp_path):
    """A second server (no worker) on a bucket holding a deployed talking avatar and its train job, by hand."""
    import subprocess

    from core.settings import Settings
    from functions.presets import resolve_render_plan
    from schemas.avatar import AvatarManifest
    from schemas.brief import RenderBrief
    from schemas.handoff import TrainOutput

    job_id = "ann-0123456789abcdef"
    bucket = tmp_path / "bucket"
    (bucket / "jobs" / job_id / "render").mkdir(parents=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=12", "-t", "1",
                    "-pix_fmt", "yuv420p", str(bucket / "jobs" / job_id / "render" / "video.mp4")], check=True)
    job = json.loads(JobManifest(job_id=job_id, kind="train", status="succeeded", input=InputRecord(key="inbox/ann.yaml"),
                                 outputs={"video": f"jobs/{job_id}/render/video.mp4"},
                                 versions=Versions(videostudio="0", python="3")).model_dump_json())
    (bucket / "jobs" / job_id / "manifest.json").write_text(json.dumps(job))
    (bucket / "avatars" / "ann").mkdir(parents=True)
    (bucket / "avatars" / "ann" / "weights.pt").write_bytes(b"not really weights")
    avatar = AvatarManifest(avatar_id="ann", job_id=job_id, backend="wav2lip", base_model="wav2lip", talks=True,
                            weights_key="avatars/ann/weights.pt",
                            metrics={"quality_score": 73, "lip_sync_test": {"offset_frames": 0, "min_dist": 6.1,
                                                                             "confidence": 4.2}})
    (bucket / "avatars" / "ann" / "manifest.json").write_text(avatar.model_dump_json())
    # bob: trained by a `deploy: false` brief, so it waits for the Deploy button.
    bob_job, prefix = "bob-0123456789abcdef", "jobs/bob-0123456789abcdef/train/"
    (bucket / prefix).mkdir(parents=True)
    (bucket / prefix / "lora.safetensors").write_bytes(b"weights")
    (bucket / prefix / "avatar.json").write_text(AvatarManifest(
        avatar_id="bob", job_id=bob_job, base_model="tiny", trigger_token="<bob>", lora_key=prefix + "lora.safetensors",
        weights_key=prefix + "lora.safetensors", lora_rank=4, lora_alpha=4.0, target_modules="attn").model_dump_json())
    handoff = TrainOutput(avatar_id="bob", avatar_key=prefix + "avatar.json", weights_key=prefix + "lora.safetensors",
                          deployed=False, preview=resolve_render_plan(RenderBrief(prompt="<bob>", model="tiny"), Settings()))
    bob = json.loads(JobManifest(job_id=bob_job, kind="train", status="succeeded", input=InputRecord(key="inbox/bob.yaml"),
                                 versions=Versions(videostudio="0", python="3")).model_dump_json())
    bob["stages"] = {"train": {"status": "succeeded", "attempts": 1, "handoff": handoff.model_dump(mode="json")}}
    (bucket / "jobs" / bob_job / "manifest.json").write_text(json.dumps(bob))
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    serve, base = start_serve(tmp_path, tmp_path / "serve.log", env, timeout_s=90)
    try:
        ensure_signed_in(browser, base)
        browser.driver.find_element(By.CSS_SELECTOR, 'nav a[href="#/avatars"]').click()
        card = browser.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, '#avatars li[data-avatar="ann"]')))
        assert "wav2lip" in card.text and "73 / 100" in card.text and "6.1" in card.text and "4.2" in card.text
        browser.wait(lambda d: d.execute_script(
            "const v = document.querySelector('#avatars video'); return v !== null && v.readyState >= 1;"))
        assert_labelled(browser)
        browser.shot("avatars")
        waiting = browser.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, '#undeployed li[data-undeployed="bob"]')))
        waiting.find_element(By.CSS_SELECTOR, 'button[data-action="deploy"]').click()
        browser.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, '#avatars li[data-avatar="bob"]')))
        assert (bucket / "avatars" / "bob" / "manifest.json").exists()
        assert not browser.driver.find_elements(By.CSS_SELECTOR, '#undeployed li[data-undeployed="bob"]')
        browser.driver.get(f"{base}/#/jobs/{bob_job}")
        assert "deployed from this job" in browser.wait(EC.visibility_of_element_located((By.ID, "deploy-status"))).text
        assert not browser.driver.find_elements(By.ID, "deploy")
        browser.driver.get(f"{base}/#/avatars")
        card = browser.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, '#avatars li[data-avatar="ann"]')))
        card.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
        browser.wait(EC.alert_is_present()).dismiss()  # "no": nothing happens
        assert (bucket / "avatars" / "ann" / "manifest.json").exists()
        card.find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
        browser.wait(EC.alert_is_present()).accept()
        browser.wait(EC.invisibility_of_element_located((By.CSS_SELECTOR, '#avatars li[data-avatar="ann"]')))
        assert not (bucket / "avatars" / "ann" / "manifest.json").exists()
        browser.assert_same_origin(base)
    finally:
        browser.leave()
        serve.terminate()
        serve.wait(timeout=30)


def test_phone_layout_and_sign_out(app, browser):
    base = app["base"]
    driver = browser.driver
    driver.set_window_size(390, 844)
    try:
        ensure_signed_in(browser, base)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page scrolls sideways on a phone ({width} px)"
        browser.shot("jobs-phone")
        driver.find_element(By.ID, "sign-out").click()
        browser.wait(EC.visibility_of_element_located((By.ID, "token")))
        assert driver.get_cookie("videostudio_session") is None
    finally:
        driver.set_window_size(1280, 800)
    browser.assert_same_origin(base)


AXE = Path(__file__).resolve().parent.parent / "scripts" / "studio-vendor" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """const done = arguments[arguments.length - 1];
axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
  .then((r) => done(r.violations.map((v) => [v.id, v.help, v.nodes.slice(0, 3).map((n) => n.target.join(' '))])),
        (e) => done([['axe-error', String(e), []]]));"""


def axe_violations(browser: Browser) -> list:
    """axe-core's WCAG 2.1 A and AA rules (contrast, labels, names, landmarks…) on the page as it is now."""
    assert AXE.is_file(), "run scripts/setup.sh (npm ci brings axe-core for this test)"
    if not browser.driver.execute_script("return typeof axe !== 'undefined'"):
        browser.driver.execute_script(AXE.read_text())  # through the driver: the page's CSP never lets it in
    return browser.driver.execute_async_script(AXE_RUN)


def test_every_page_meets_wcag_aa_at_desktop_and_phone_sizes(app, browser):
    base, driver = app["base"], browser.driver
    ensure_signed_in(browser, base)
    jobs = httpx.get(f"{base}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert jobs, "the journeys above made jobs"
    pages = {"jobs": ("#/jobs", "jobs"), "job": (f"#/jobs/{jobs[0]['job_id']}", "stages"),
             "avatars": ("#/avatars", "avatars"), "new-avatar": ("#/new-avatar", "avatar-id"),
             "create": ("#/new", "prompt"), "editor": ("#/editor", "brief-text")}
    found = {}
    try:
        for width, height in ((1280, 800), (390, 844)):
            driver.set_window_size(width, height)
            for name, (route, ready) in pages.items():
                driver.get(f"{base}/{route}")
                browser.wait(EC.presence_of_element_located((By.ID, ready)))
                if name == "create":  # both halves of the form
                    found[f"{name}-prompt@{width}"] = axe_violations(browser)
                    driver.find_element(By.CSS_SELECTOR, '#mode input[value="talking"]').click()
                if name == "editor":  # with its error list showing
                    editor = driver.find_element(By.ID, "brief-text")
                    editor.clear()
                    editor.send_keys("epochs: 0\n")
                    browser.wait(EC.visibility_of_element_located((By.ID, "brief-errors")))
                overflow = driver.execute_script("return document.documentElement.scrollWidth")
                assert overflow <= width + 1, f"{name} scrolls sideways at {width} px ({overflow} px)"
                found[f"{name}@{width}"] = axe_violations(browser)
            browser.shot(f"editor-{width}")
        driver.find_element(By.ID, "sign-out").click()
        browser.wait(EC.visibility_of_element_located((By.ID, "token")))
        found["sign-in"] = axe_violations(browser)
    finally:
        driver.set_window_size(1280, 800)
    assert {page: v for page, v in found.items() if v} == {}


def test_the_first_page_is_small_and_every_asset_is_in_the_package(app):
    import gzip

    base = app["base"]
    index = httpx.get(base + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert "default-src 'self'" in index.headers["content-security-policy"]
    static = Path(__file__).resolve().parent.parent / "triggers" / "studio" / "static"
    total = 0
    assets = sorted(p for p in static.rglob("*") if p.is_file())
    assert {"app.js", "pages/new-avatar.js", "pages/editor.js", "vendor/json-schema.js", "vendor/yaml.js"} <= {
        p.relative_to(static).as_posix() for p in assets}
    for asset in assets:  # everything the studio can load, the lazily loaded YAML parser too
        response = httpx.get(f"{base}/studio/{asset.relative_to(static).as_posix()}")
        assert response.status_code == 200, asset.name
        total += len(gzip.compress(response.content))
    assert total < 200_000, f"the studio is {total} bytes gzipped"
    ours = [p for p in assets if p.suffix in (".js", ".css", ".html") and "vendor" not in p.parts]
    # No absolute URL in anything the page loads or links (a placeholder's example text is no request).
    text = "".join(p.read_text() for p in ours).replace("http://www.w3.org/2000/svg", "")
    assert not re.findall(r"""(?:fetch|import|EventSource|open|src|href|url)\W{0,4}["'`][a-z]+://""", text, re.I)
    assert "://" not in re.sub(r'placeholder: "https://[^"]*"', "", text)
