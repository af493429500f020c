"""``label-anything up`` on Chelsea photos, and Debian's Chromium driven by Playwright's Python package.

Skips with the reason when Chromium, Playwright or Label Studio is missing (``make setup`` installs
Chromium with apt-get when run as root).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from label_anything.app.labelstudio_process import (
    free_port,
    label_studio_installed,
    spawn,
    stop_process,
    wait_http,
)
from label_anything.labelstudio.client import LabelStudioClient

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",  # no internet here: avoids a stream of refused connections
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
IMAGES = ("chelsea-keypoint.jpg", "chelsea-rectangle.jpg")  # one fresh task per test


@dataclass
class Session:
    url: str
    project_id: int
    username: str
    password: str
    images: Path
    client: LabelStudioClient


def _start_up(args: list[str], cwd: Path, timeout: float = 400) -> tuple[subprocess.Popen, list[str]]:
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, "-m", "label_anything", "up", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd)

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip("\n") for line in proc.stdout)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not any(line.startswith("Ctrl+C") for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("label-anything up did not get ready:\n" + "\n".join(lines))
        time.sleep(0.5)
    return proc, lines


@pytest.fixture(scope="session")
def session(tmp_path_factory: pytest.TempPathFactory, chelsea) -> Iterator[Session]:
    """``up`` (Label Studio + a classical backend) once for every browser test module: each Label Studio start
    costs ~30-60 s on 2 cores. A module that needs another project or backend adds its own to this one."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run `make setup` as root (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    if not label_studio_installed() and shutil.which("label-studio") is None:
        pytest.skip("label-studio is not installed (pip install 'label-anything[labelstudio]')")
    from PIL import Image

    base = tmp_path_factory.mktemp("browser")
    images = base / "photos"
    images.mkdir()
    for name in IMAGES:
        Image.fromarray(chelsea).save(images / name, quality=95)
    data_dir = base / "data"
    port = free_port()
    proc, _ = _start_up(["--images", str(images), "--labels", "cat,person", "--model-name", "classical",
                         "--port", str(port), "--backend-port", str(free_port()), "--data-dir", str(data_dir),
                         "--cache-dir", str(base / "cache")], cwd=base)
    try:
        creds = json.loads((data_dir / "credentials.json").read_text())
        url = f"http://localhost:{port}"
        client = LabelStudioClient(url, creds["token"])
        (project,) = client.projects()
        yield Session(url, project["id"], creds["username"], creds["password"], images, client)
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(session: Session):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, session: Session):
    """A logged-in page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(session.url + "/user/login")
    page.fill('input[name="email"]', session.username)
    page.fill('input[name="password"]', session.password)
    page.click('button[type="submit"]')
    page.wait_for_url(lambda u: "/user/login" not in u)
    yield page
    context.close()


SAM3_THRESHOLD = 0.322
"""``serve --concept-threshold`` for random SAM 3 weights: 49 instances of "cat" on chelsea (0.5 keeps none)."""


@dataclass
class Backend:
    url: str
    log: Path


@pytest.fixture(scope="module")
def sam3_backend(session: Session, sam3_checkpoint: Path, sam3_cache_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """``label-anything serve --model-name sam3`` (random weights, CPU) for ``session``'s Label Studio, one per
    module that asks and stopped at its end (~5 GB: never two at once), with the answers ``up --model-name sam3``
    gives (brush + box) and label names as concepts off, so opening a task prelabels nothing: what a test sees
    comes from what it typed. ``--cache-dir sam3_cache_dir`` already holds chelsea's embedding: tasks of chelsea's
    exact pixels (a PNG) are never encoded."""
    log = tmp_path_factory.mktemp("sam3-ui-backend") / "backend.log"
    port = free_port()
    cmd = [sys.executable, "-m", "label_anything", "serve", "--model-name", "sam3", "--checkpoint",
           str(sam3_checkpoint), "--device", "cpu", "--cache-dir", str(sam3_cache_dir), "--concept-threshold",
           str(SAM3_THRESHOLD), "--out-mask", "--out-bbox", "--no-label-concepts", "--port", str(port)]
    proc = spawn(cmd, log, {"LABEL_STUDIO_URL": session.url, "LABEL_STUDIO_API_KEY": session.client.token})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, 300, log)  # 3.4 GB of weights: ~10-30 s on 2 cores
        yield Backend(url, log)
    finally:
        stop_process(proc)
