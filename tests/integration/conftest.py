"""A real Label Studio 1.23.2 and our backend as a real ``label-anything serve`` process.

Label Studio takes 40 s or more to start on a small machine, so it is started once per session.
Every process started here runs in its own session and is stopped (process group) at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

LS_USER = "u@example.com"
LS_PASSWORD = "integration-pass-123"
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path, **kwargs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}; log:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; log:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own process group (start_new_session)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class LabelStudio:
    url: str
    token: str
    document_root: Path
    api: httpx.Client


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    if os.environ.get("LABEL_ANYTHING_TEST_LS_URL"):  # reuse a running one (development)
        api = httpx.Client(
            base_url=os.environ["LABEL_ANYTHING_TEST_LS_URL"],
            timeout=120,
            headers={"Authorization": f"Token {os.environ['LABEL_ANYTHING_TEST_LS_TOKEN']}"},
        )
        yield LabelStudio(
            url=os.environ["LABEL_ANYTHING_TEST_LS_URL"],
            token=os.environ["LABEL_ANYTHING_TEST_LS_TOKEN"],
            document_root=Path(os.environ["LABEL_ANYTHING_TEST_LS_DOCROOT"]),
            api=api,
        )
        return
    exe = VENV_BIN / "label-studio"
    if not exe.exists() and shutil.which("label-studio") is None:
        pytest.skip("label-studio is not installed (pip install label-studio==1.23.2)")
    base = tmp_path_factory.mktemp("label-studio")
    docroot = tmp_path_factory.mktemp("ls-files")
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(base),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
        "ML_TIMEOUT_SETUP": "10",
    }
    log = base / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(exe) if exe.exists() else "label-studio",
                "start",
                "--no-browser",
                "--port",
                str(port),
                "--username",
                LS_USER,
                "--password",
                LS_PASSWORD,
                "--user-token",
                LS_TOKEN,
                "--enable-legacy-api-token",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=base,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, 240, log)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120)
        yield LabelStudio(url=url, token=LS_TOKEN, document_root=docroot, api=api)
        api.close()
    finally:
        _stop(proc)


@dataclass
class Backend:
    url: str
    log: Path


@pytest.fixture(scope="session")
def start_backend(label_studio: LabelStudio, random_checkpoint, tmp_path_factory) -> Iterator[Callable[..., Backend]]:
    """Factory: ``start_backend(*extra_args)`` runs ``label-anything serve`` with random MobileSAM weights."""
    procs: list[subprocess.Popen] = []
    cache = tmp_path_factory.mktemp("backend-cache")

    def start(*extra: str, auth: tuple[str, str] | None = None) -> Backend:
        port = free_port()
        log = cache / f"backend-{port}.log"
        env = {
            **os.environ,
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.token,
            "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
        }
        cmd = [
            str(VENV_BIN / "label-anything"),
            "serve",
            "--model-name",
            "mobile_sam",
            "--sam-config",
            "vit_t",
            "--checkpoint",
            str(random_checkpoint("mobile_sam", "vit_t")),
            "--device",
            "cpu",
            "--cache-dir",
            str(cache),
            "--port",
            str(port),
            *extra,
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health", proc, 120, log, auth=auth)
        return Backend(url=url, log=log)

    yield start
    for proc in procs:
        _stop(proc)
