"""``label-anything up`` end to end: a real Label Studio and backend as its children, checked through REST.

Two Label Studio starts (first run, rerun) in one test, so the module costs about two minutes; the
error cases return before anything is started. The first-run download of MobileSAM is tested in
``tests/test_up_first_run.py``; here the first run meets a model host (on loopback) serving a corrupt file,
and goes on with ``classical``.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from label_anything import cli
from label_anything.app import up
from label_anything.app.labelstudio_process import free_port, label_studio_installed, port_in_use
from label_anything.labelstudio.client import LabelStudioClient

pytestmark = pytest.mark.integration


class UpRun:
    """``label-anything up`` as a subprocess whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "label_anything", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 400) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line; output:\n" + "\n".join(self.lines))

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def write_image(path: Path, which: str = "chelsea") -> Path:
    import skimage.data
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(getattr(skimage.data, which)()).convert("RGB").save(path, quality=90)
    return path


def run_cli(*args: str, capsys) -> tuple[int, str]:
    code = cli.main(["up", *args])
    return code, capsys.readouterr().err


def test_no_images_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli("--images", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d"), capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and "no images in" in err and "--images" in err, err


def test_port_in_use_is_one_line_error(tmp_path, capsys):
    write_image(tmp_path / "photos" / "a.jpg")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli("--images", str(tmp_path / "photos"), "--port", str(port), "--backend-port",
                            str(free_port()), "--data-dir", str(tmp_path / "d"), capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and f"port {port} is in use" in err and "--port" in err, err


def test_missing_label_studio_is_one_line_error(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "photos" / "a.jpg")
    monkeypatch.setattr(up, "label_studio_installed", lambda: False)
    code, err = run_cli("--images", str(tmp_path / "photos"), "--data-dir", str(tmp_path / "d"), capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and "pip install 'label-anything[labelstudio]'" in err, err


@pytest.fixture()
def corrupt_model_host():
    """A loopback server answering every GET with a few bytes that are not MobileSAM; yields its URL and the
    list of paths asked for."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = b"not a checkpoint"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/mobile_sam.pt", requests
    server.shutdown()
    server.server_close()


def check_project(data_dir: Path, ls_port: int, backend_port: int, n_tasks: int) -> int:
    """REST: one project for the folder with ``n_tasks`` local-files tasks and our backend Connected."""
    creds = json.loads((data_dir / "credentials.json").read_text())
    client = LabelStudioClient(f"http://127.0.0.1:{ls_port}", creds["token"])
    try:
        (project,) = [p for p in client.projects() if p["title"] == "photos"]
        tasks = client.tasks(project["id"])
        assert len(tasks) == n_tasks
        assert all(t["data"]["image"].startswith("/data/local-files/?d=photos") for t in tasks)
        assert 'smart="true"' in project["label_config"] and "BrushLabels" in project["label_config"]
        (ml,) = client.ml_backends(project["id"])
        assert ml["url"] == f"http://127.0.0.1:{backend_port}"
        assert ml["is_interactive"] is True
        assert ml["readable_state"] == "Connected", ml
        return project["id"]
    finally:
        client.close()


@pytest.mark.skipif(not label_studio_installed(), reason="label-studio is not installed")
def test_up_provisions_reruns_and_stops(tmp_path, corrupt_model_host):
    images = tmp_path / "photos"
    write_image(images / "chelsea.jpg")
    write_image(images / "sub" / "coffee.png", "coffee")
    (images / "notes.txt").write_text("not an image")
    data_dir = tmp_path / "data"
    ls_port, backend_port = free_port(), free_port()
    url, requests = corrupt_model_host
    # --model-name auto (the default) and an empty cache: a first run, which tries to download MobileSAM
    args = ("--images", str(images), "--labels", "cat,person", "--port", str(ls_port), "--backend-port",
            str(backend_port), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"))

    first = UpRun(*args, "--download-url", url, cwd=tmp_path)
    try:
        started = time.monotonic()
        ready = first.wait_for("ready")
        print(f"first up → ready: {time.monotonic() - started:.0f} s")
        assert f"http://localhost:{ls_port}/projects/" in ready
        first.wait_for("Ctrl+C")  # the login lines follow the ready line
        assert any(line.startswith("log in as admin@example.com with password") for line in first.lines)
        (why,) = [line for line in first.lines if "classical" in line and "download" in line]
        assert "could not download MobileSAM" in why and "is corrupt" in why and url in why, why
        assert "classical" in ready and requests == ["/mobile_sam.pt"]  # the backend runs GrabCut
        project_id = check_project(data_dir, ls_port, backend_port, n_tasks=2)
        assert first.interrupt() == 0
    finally:
        first.kill()
    assert first.lines[-1] == "stopped"
    assert not port_in_use(ls_port) and not port_in_use(backend_port)

    write_image(images / "astronaut.jpg", "astronaut")
    second = UpRun(*args, "--download-url", url, "--no-download", cwd=tmp_path)
    try:
        started = time.monotonic()
        ready = second.wait_for("ready")
        assert any("--no-download" in line and "classical" in line for line in second.lines), second.lines
        assert "classical" in ready and requests == ["/mobile_sam.pt"]  # not asked again
        print(f"second up → ready: {time.monotonic() - started:.0f} s")
        assert check_project(data_dir, ls_port, backend_port, n_tasks=3) == project_id
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(60) == 0
    finally:
        second.kill()
    assert not port_in_use(ls_port) and not port_in_use(backend_port)
    assert os.stat(data_dir / "credentials.json").st_mode & 0o077 == 0
