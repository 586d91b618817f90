"""The web UI driven in a real browser (headless Chromium + selenium): upload rendered toy exemplars, check
and prepare them, train a tiny model, stop and resume, generate, cancel, export; and bad input.

Skipped (with the reason) only when Chromium, its driver or selenium is missing; ``.ci/run`` installs them.
``DREAMRELATION_SCREENSHOTS=1`` writes ``docs/ui_*.png`` (the README's screenshots).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER), reason="no Chromium: apt-get install -y chromium chromium-driver"
    ),
]
DOCS = Path(__file__).resolve().parent.parent / "docs"
PROMPT = "A man is high-fiving a woman."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Page:
    """A few helpers over the selenium driver for Gradio's elements (found by their elem_id)."""

    def __init__(self, driver) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.d, self.By, self.Keys = driver, By, Keys

    def el(self, css: str):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def wait(self, what: Callable[[], object], timeout: float = 60, message: str = "") -> object:
        end = time.time() + timeout
        while time.time() < end:
            try:
                value = what()
            except Exception:  # noqa: BLE001 - elements come and go while Gradio re-renders
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out: {message}\n{self.text('body')[-2000:]}")

    def text(self, css: str) -> str:
        return self.el(css).text

    def type(self, elem_id: str, value: str, enter: bool = False) -> None:
        css = f"#{elem_id} textarea, #{elem_id} input:not([type=file]):not([type=range])"
        box = self.wait(lambda: self.el(css).is_displayed() and self.el(css), 20, f"field {elem_id}")
        box.click()
        box.send_keys(self.Keys.CONTROL, "a")
        box.send_keys(self.Keys.DELETE)
        box.send_keys(value)
        box.send_keys(self.Keys.ENTER if enter else self.Keys.TAB)

    def click(self, elem_id: str) -> None:
        self.el(f"#{elem_id}").click()

    def tab(self, name: str) -> None:
        self.d.find_element(self.By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()
        time.sleep(0.5)

    def toast(self, pattern: str, timeout: float = 60) -> str:
        def found() -> str | None:
            texts = [t.text for t in self.d.find_elements(self.By.CSS_SELECTOR, ".toast-body")]
            return next((t for t in texts if re.search(pattern, t)), None)

        text = str(self.wait(found, timeout, f"toast {pattern!r}"))
        for close in self.d.find_elements(self.By.CSS_SELECTOR, ".toast-close"):
            with contextlib.suppress(Exception):  # already gone
                close.click()
        return text

    def shot(self, name: str) -> None:
        if os.environ.get("DREAMRELATION_SCREENSHOTS") == "1":
            self.d.set_window_size(1400, max(900, self.d.execute_script("return document.body.scrollHeight")))
            self.d.save_screenshot(str(DOCS / f"ui_{name}.png"))
            self.d.set_window_size(1400, 1000)


@pytest.fixture(scope="module")
def page(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Page, Path]]:
    """The app on the tiny bundle (outputs in a temp folder) in headless Chromium."""
    pytest.importorskip("gradio", reason="the web UI is optional: pip install 'dreamrelation[ui]'")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra)")
    from dreamrelation.ui import launch

    root = tmp_path_factory.mktemp("browser")
    cwd = os.getcwd()
    os.chdir(root)
    app, url = launch("127.0.0.1", _free_port(), default_model=tiny_bundle, out_dir=root / "ui", block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        driver.get(url)
        page = Page(driver)
        page.wait(lambda: page.el("#model"), 60, "the page")
        yield page, root
    finally:
        driver.quit()
        app.close()
        os.chdir(cwd)


def _exemplar_zip(folder: Path) -> Path:
    """Two rendered toy exemplars (videos, captions, colour masks) as one zip, as a person would upload."""
    from dreamrelation.evaluation.toy_study import write_exemplar_videos

    write_exemplar_videos("high_fiving", 2, 0, folder / "set")
    archive = folder / "exemplars.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((folder / "set").rglob("*")):
            if f.is_file():
                zf.write(f, f"set/{f.relative_to(folder / 'set')}")
    return archive


def _coloured_pixels(element) -> int:
    """Saturated pixels in a screenshot of ``element``: the chart's lines and legend (its axes and grid are
    grey), so an empty chart counts ~0."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 80).sum())


def _status_step(page: Page, state: str) -> int:
    text = page.text("#train-status")
    m = re.search(rf"{state}: step (\d+)/", text)
    return int(m.group(1)) if m else -1


def test_whole_workflow_in_the_browser(page: tuple[Page, Path], tmp_path: Path) -> None:
    p, root = page
    # 1. Data: upload a zip of rendered exemplars, captions from a template, mask previews with a legend
    p.el("#data-videos input[type=file]").send_keys(str(_exemplar_zip(tmp_path)))
    p.wait(lambda: p.d.find_elements(p.By.CSS_SELECTOR, "#data-videos .file-preview"), 30, "upload")
    p.click("data-add")
    p.wait(lambda: "added 1 file" in p.text("body"), 30, "uploads added")
    p.type("data-template", "A {subject1} is high-fiving a {subject2}.")
    p.type("data-subject1", "man")
    p.type("data-subject2", "woman")
    p.click("data-check")
    p.wait(lambda: "prepared 2" in p.text("#data-report"), 120, "prepare report")
    assert "red = subject1 (man), blue = subject2 (woman)" in p.text("#data-legend")
    previews = p.d.find_elements(p.By.CSS_SELECTOR, "#data-previews img")
    assert len(previews) == 2
    assert "A man is high-fiving a woman." in p.text("#data-previews")
    p.shot("data")

    # 2. Train: live progress, chart and validation samples; stop (checkpoint) and resume
    p.tab("2 Train")
    prepared = p.el("#train-data textarea, #train-data input").get_attribute("value")
    assert "prepared" in prepared
    p.type("train-steps", "200")
    p.type("train-every", "2")
    p.type("train-vprompt", PROMPT)
    p.d.find_element(p.By.XPATH, "//button[contains(., 'Advanced: more trainer')]").click()
    p.type("train-extra", "monitor.num_inference_steps=2 optim.warmup_steps=0 contrastive.enabled=false")
    p.click("train-start")
    p.toast("started ")
    p.wait(lambda: _status_step(p, "running") >= 2, 120, "two training steps")
    p.wait(lambda: p.d.find_elements(p.By.CSS_SELECTOR, "#train-videos img"), 60, "validation samples")
    assert PROMPT in p.text("#train-videos")  # each sample is captioned with its prompt
    p.wait(lambda: p.d.find_elements(p.By.CSS_SELECTOR, "#train-chart canvas, #train-chart svg"), 30, "chart")
    p.wait(lambda: _coloured_pixels(p.el("#train-chart")) > 200, 30, "loss lines drawn in the chart")
    p.shot("train")
    p.click("train-stop")
    p.toast("stopping")
    p.wait(lambda: _status_step(p, "stopped") > 0, 120, "stopped")
    step = _status_step(p, "stopped")
    run = Path(p.el("#train-run input").get_attribute("value"))
    assert step < 200 and list((run / "checkpoints").glob("step_*.safetensors"))
    p.type("train-steps", str(step + 1))
    p.wait(lambda: p.el("#train-steps input").get_attribute("value") == str(step + 1), 10, "steps typed")
    time.sleep(0.5)
    p.click("train-resume")
    p.toast("resumed ")
    assert json.loads((run / "ui_job.json").read_text())["steps"] == step + 1
    p.wait(lambda: _status_step(p, "finished") == step + 1, 120, "resumed run finished")
    assert (run / "adapters" / "relation.safetensors").is_file()
    header, *rows = (run / "loss.csv").read_text().splitlines()
    assert len(rows) == step + 1 and "mask_mse" in header

    # 3. Generate with the run's adapters: one source of truth for the roles, progress, cancel
    p.click("train-use")
    p.toast("Generate now uses the adapters of")
    p.wait(lambda: p.el("#gen-go").is_displayed(), 10, "Generate tab shown")
    p.type("gen-roles", "relation=1.5")
    time.sleep(1)
    ticked = [c for c in p.d.find_elements(p.By.CSS_SELECTOR, "input[type=checkbox]") if c.is_displayed()]
    assert sum(c.is_selected() for c in ticked if c.get_attribute("name") != "gif") <= 2  # relation + GIF
    p.type("gen-prompt", PROMPT)
    p.type("gen-seeds", "0, 1")
    p.type("gen-steps", "2")
    p.click("gen-go")
    p.wait(lambda: "2 video(s)" in p.text("#gen-status"), 120, "two videos")
    made = list((root / "ui" / "generate").glob("*/*.gif"))
    assert len(made) == 2
    p.wait(lambda: len(p.d.find_elements(p.By.CSS_SELECTOR, "#gen-past img")) >= 2, 30, "earlier outputs")
    p.shot("generate")
    folders = sorted((root / "ui" / "generate").iterdir())
    p.type("gen-seeds", ", ".join(map(str, range(16))))  # 16 x 128 steps: long enough to cancel
    p.type("gen-steps", "128")
    p.click("gen-go")
    p.wait(lambda: not p.el("#gen-go").is_enabled(), 10, "Generate disabled while running")
    time.sleep(0.5)
    p.click("gen-cancel")
    p.wait(lambda: "cancelled" in p.text("#gen-status"), 30, "cancelled")
    p.wait(lambda: p.el("#gen-go").is_enabled(), 30, "Generate enabled again")
    time.sleep(2)
    assert sorted((root / "ui" / "generate").iterdir()) == folders  # the cancelled request left nothing

    # 4. Share: export the relation adapter, downloadable
    p.tab("4 Share")
    p.type("share-source", str(run), enter=True)
    p.d.find_element(p.By.XPATH, "//label[contains(., 'comfyui')]").click()
    p.click("share-go")
    p.wait(lambda: "exported" in p.text("#share-note"), 60, "export")
    assert (root / "ui" / "export" / f"{run.name}_comfyui.safetensors").is_file()
    assert p.d.find_elements(p.By.CSS_SELECTOR, "#share-file a")
    p.shot("share")


def test_bad_input_in_the_browser(page: tuple[Page, Path], capfd: pytest.CaptureFixture) -> None:
    p, root = page
    p.d.refresh()
    p.wait(lambda: p.el("#model"), 60, "the page")
    before = sorted((root / "ui").rglob("*"))
    p.type("data-folder", str(root / "missing"), enter=True)
    p.click("data-check")
    p.toast("exemplar folder not found")
    p.tab("2 Train")
    p.type("train-run", str(root), enter=True)  # an ordinary folder
    p.toast("not a training run folder")
    p.click("train-start")
    p.toast("training data not found")
    p.tab("3 Generate")
    p.type("gen-adapters", str(root / "nowhere"), enter=True)
    p.toast("adapters path not found")
    p.type("gen-adapters", "", enter=True)
    p.type("gen-seeds", "")
    p.type("gen-steps", "2")
    p.click("gen-go")
    p.toast("no seed given")
    p.type("gen-seeds", str(2**70))
    p.wait(lambda: p.el("#gen-go").is_enabled(), 30, "Generate enabled after an error")
    p.click("gen-go")
    p.toast(r"must be between 0 and 2\*\*63 - 1")
    toasts = " ".join(t.text for t in p.d.find_elements(p.By.CSS_SELECTOR, ".toast-body"))
    assert "Traceback" not in toasts and "Error:" not in toasts
    assert sorted((root / "ui").rglob("*")) == before  # failed requests wrote nothing
    assert "Traceback" not in capfd.readouterr().err  # user errors print no traceback on the server
