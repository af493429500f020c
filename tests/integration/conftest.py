"""A real Label Studio 1.23.2 and our backend as a real ``label-anything serve`` process.

Label Studio takes 40 s or more to start on a small machine, so it is started once per session.
Every process started here runs in its own session and is stopped (process group) at teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from label_anything.app.labelstudio_process import (
    free_port,
    label_studio_installed,
    spawn,
    start_label_studio,
    stop_process,
    wait_http,
)
from label_anything.labelstudio.client import LabelStudioClient, LabelStudioError

LS_USER = "u@example.com"
LS_PASSWORD = "integration-pass-123"
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
VENV_BIN = Path(sys.executable).parent


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path, **kwargs) -> None:
    try:
        wait_http(url, proc, timeout, log, **kwargs)
    except LabelStudioError as exc:
        raise RuntimeError(str(exc)) from None


@dataclass
class LabelStudio:
    url: str
    token: str
    document_root: Path
    api: httpx.Client
    client: LabelStudioClient


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    if os.environ.get("LABEL_ANYTHING_TEST_LS_URL"):  # reuse a running one (development)
        client = LabelStudioClient(os.environ["LABEL_ANYTHING_TEST_LS_URL"], os.environ["LABEL_ANYTHING_TEST_LS_TOKEN"])
        yield LabelStudio(
            url=client.url,
            token=client.token,
            document_root=Path(os.environ["LABEL_ANYTHING_TEST_LS_DOCROOT"]),
            api=client.api,
            client=client,
        )
        return
    if not label_studio_installed() and shutil.which("label-studio") is None:
        pytest.skip("label-studio is not installed (pip install label-studio==1.23.2)")
    base = tmp_path_factory.mktemp("label-studio")
    docroot = tmp_path_factory.mktemp("ls-files")
    port = free_port()
    log = base / "label-studio.log"
    proc = start_label_studio(port, base, docroot, LS_USER, LS_PASSWORD, LS_TOKEN, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, 240, log)
        client = LabelStudioClient(url, LS_TOKEN)
        yield LabelStudio(url=url, token=LS_TOKEN, document_root=docroot, api=client.api, client=client)
        client.close()
    finally:
        stop_process(proc)


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
        proc = spawn(cmd, log, env)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health", proc, 120, log, auth=auth)
        return Backend(url=url, log=log)

    yield start
    for proc in procs:
        stop_process(proc)
