"""Run a local Label Studio (and the backend beside it) as child processes: start, wait, stop.

Used by ``label-anything up`` and by the integration tests, so both exercise the same start-up code. Label
Studio is started with ``--enable-legacy-api-token``: ``labelstudio.client.LabelStudioClient`` then provisions
it with the token given here (``Authorization: Token ...``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from label_anything.labelstudio.client import LabelStudioError


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """True when something listens on ``port`` (either on loopback or on all interfaces)."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return True
    return False


def label_studio_installed() -> bool:
    return importlib.util.find_spec("label_studio") is not None


def label_studio_command() -> list[str]:
    """How to run Label Studio with this Python: its console script next to ``sys.executable`` if there
    (the same ``label_studio.server:main``), else ``python -m label_studio.server``."""
    script = Path(sys.executable).parent / "label-studio"
    if script.exists():
        return [str(script)]
    if shutil.which("label-studio") and not label_studio_installed():
        return ["label-studio"]
    return [sys.executable, "-m", "label_studio.server"]


def label_studio_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    """Settings a local ML backend and local images need (each default blocks one of them)."""
    return {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "ML_BLOCK_LOCAL_IP": "false",  # else http://127.0.0.1:<backend> is refused (403)
        "SSRF_PROTECTION_ENABLED": "false",  # else the backend's webhook cannot be created
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
        "ML_TIMEOUT_SETUP": "10",  # the default 3 s is tight on a busy 2-core machine
    }


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed ``up`` leaves no server behind (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(cmd: Sequence[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so stopping it stops its whole process group), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )


def start_label_studio(
    port: int, data_dir: Path, document_root: Path, username: str, password: str, token: str, log: Path
) -> subprocess.Popen:
    """Start Label Studio with the first admin user (created if missing) and legacy API tokens on."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *label_studio_command(),
        "start",
        "--no-browser",
        "--port",
        str(port),
        "--username",
        username,
        "--password",
        password,
        "--user-token",
        token,
        "--enable-legacy-api-token",
    ]
    return spawn(cmd, log, label_studio_env(data_dir, document_root), cwd=data_dir)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        proc.wait(10)


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return "; log tail:\n" + log.read_text(errors="replace")[-chars:]


def wait_http(
    url: str,
    proc: subprocess.Popen | None,
    timeout: float,
    log: Path | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    **kwargs: Any,
) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not interrupted():
        if proc is not None and proc.poll() is not None:
            raise LabelStudioError(f"{url}: the server exited with code {proc.returncode}{_tail(log)}")
        try:
            if httpx.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    if not interrupted():
        raise LabelStudioError(f"{url} did not answer within {timeout:.0f} s{_tail(log)}")
