"""Running a script with the trainers' python: an offline environment of its own, the report it prints."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def trainers_env(tmp: Path) -> dict[str, str]:
    """The environment of a trainer subprocess: offline, settings in ``tmp``, nothing of our venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp / "ultralytics-settings"), "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": str(os.cpu_count() or 2)})
    return env


def run_script(python: Path, script: str | Path, *args: str, tmp: Path, timeout: float = 1200) -> str:
    """Run ``script`` (a path, or a name in tests/trainers/) with the trainers' python; returns its stdout."""
    path = script if isinstance(script, Path) else HERE / script
    return run_command([str(python), str(path), *args], tmp=tmp, timeout=timeout)


def run_command(cmd: list[str], *, tmp: Path, timeout: float = 1200) -> str:
    """Run ``cmd`` in ``tmp`` with ``trainers_env``; returns its stdout (fails with its output's tail)."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=trainers_env(tmp), cwd=tmp)
    assert done.returncode == 0, (
        f"{Path(cmd[1] if len(cmd) > 1 else cmd[0]).name} exited {done.returncode}\n"
        f"--- stdout (tail) ---\n{done.stdout[-6000:]}\n--- stderr (tail) ---\n{done.stderr[-6000:]}")
    return done.stdout


def last_json(stdout: str) -> dict:
    """The JSON report a script printed as its last line."""
    lines = stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no JSON report at the end of:\n{stdout[-3000:]}"
    return json.loads(lines[-1])
