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


SAM3_THRESHOLD = 0.322
"""``serve --concept-threshold`` for random SAM 3 weights, which score every instance ~0.32: this keeps 49 instances
of "cat" on chelsea (most other phrases: none, e.g. "dog", or 200, the most, e.g. "person"; 0.5 keeps none)."""


@pytest.fixture(scope="module")
def sam3_backend(
    request: pytest.FixtureRequest, label_studio: LabelStudio, sam3_checkpoint: Path, sam3_cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Backend]:
    """``label-anything serve --model-name sam3`` with random SAM 3 weights on the CPU, one per module that asks,
    stopped at the module's end (it holds ~5 GB, next to the test process's ``sam3_model``: never start two).

    Its ``--cache-dir`` is ``sam3_cache_dir``, which already holds chelsea's embedding: tasks whose image has
    chelsea's exact pixels (a PNG, not a JPEG) are never encoded. The module's ``SAM3_THRESHOLD`` (default
    ``SAM3_THRESHOLD`` here) is ``--concept-threshold``; its ``SAM3_SERVE_ARGS`` (a tuple, e.g. ``("--out-bbox",)``)
    are added to the command.
    """
    threshold = getattr(request.module, "SAM3_THRESHOLD", SAM3_THRESHOLD)
    log = tmp_path_factory.mktemp("sam3-backend") / "backend.log"
    port = free_port()
    cmd = [
        str(VENV_BIN / "label-anything"), "serve", "--model-name", "sam3", "--checkpoint", str(sam3_checkpoint),
        "--device", "cpu", "--cache-dir", str(sam3_cache_dir), "--concept-threshold", str(threshold),
        "--port", str(port), *getattr(request.module, "SAM3_SERVE_ARGS", ()),
    ]
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    proc = spawn(cmd, log, env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health", proc, 300, log)  # loading 3.4 GB of weights: ~10-30 s on 2 cores
        yield Backend(url=url, log=log)
    finally:
        stop_process(proc)
