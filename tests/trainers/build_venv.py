"""Build the trainers' venv (Ultralytics, MMDetection 3.3 + mmcv 2.1 with its CPU ops) once per machine.

Run as a script (``python tests/trainers/build_venv.py [VENV]``, default ``build/trainers-venv``) or through
``tests/trainers/conftest.py``. Standard library only: it runs under any Python 3.11.

The trainers need ``opencv-python``, which must not sit beside our ``opencv-python-headless`` in ``.venv``,
so they get a venv of their own. It is built in a temporary folder beside the target and renamed into place
when complete (a stamp file inside records what went in), so an interrupted build leaves nothing that looks
finished, and a second run with the same recipe does nothing.

``mmcv`` 2.1.0 (full, with ``mmcv.ops``, which ``mmdet.structures.mask`` imports) has no wheel on the
package index: it is built from its sdist, whose ``setup.py`` hard-codes ``-std=c++14``/``-std=c++17``; the
installed torch's headers need C++20, so the flags are switched before building. The wheel is kept in
``build/wheels/`` (keyed by the torch version it was built against) and reused by later builds.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / "build" / "trainers-venv"
WHEELS = REPO / "build" / "wheels"
# Also kept per user, like pip's wheel cache, so that a fresh clone on the same machine (CI) reuses it.
USER_WHEELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "label-anything" / "wheels"

MMCV = "mmcv==2.1.0"
MMDET = "mmdet==3.3.0"
# torch / torchvision: whatever pip picks under the machine's cap (the on-disk release); mmcv is built against it.
BASE = [
    "torch",
    "torchvision",
    "ultralytics>=8.3,<8.5",
    "mmengine==0.10.7",
    "setuptools<81",  # mmcv's setup.py imports pkg_resources (gone in 81); torch 2.14 needs >= 77
    "wheel",
    "ninja",
    "pycocotools",
    "scipy",
    "shapely",
    "six",
    "terminaltables",
    "tqdm",
]
RECIPE = {"base": BASE, "mmcv": MMCV, "mmdet": MMDET, "version": 1}
STAMP = ".trainers-venv.json"


def log(message: str) -> None:
    print(f"[trainers-venv {time.strftime('%H:%M:%S')}] {message}", flush=True)


LOG = REPO / "build" / "trainers-venv.log"
"""Everything pip and the compiler say; the console gets one line per step and a heartbeat."""

_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")  # ninja's "[12/87] c++ ..." lines


def run(cmd: list[str], *, env: dict[str, str] | None = None, heartbeat: str = "") -> None:
    """Run ``cmd``, its output appended to ``LOG``; on failure raise with the output's last lines."""
    log("$ " + " ".join(str(c) for c in cmd))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    last_beat = time.monotonic()
    with open(LOG, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(str(c) for c in cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        progress = ""
        for line in proc.stdout:
            out.write(line)
            if "WARNING: Location" in line:  # pip on this machine's local index folders: noise
                continue
            tail = [*tail[-59:], line.rstrip()]
            if match := _PROGRESS.match(line):
                progress = f"{match[1]}/{match[2]} compiled"
            if heartbeat and time.monotonic() - last_beat > 60:
                log(f"{heartbeat} ... {progress or 'working'}")
                last_beat = time.monotonic()
        code = proc.wait()
    if code:
        raise RuntimeError(f"{cmd[:4]} ... exited {code}; last lines (all of it in {LOG}):\n" + "\n".join(tail))


def recipe_digest() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def is_built(venv: Path) -> bool:
    """True when ``venv`` holds a complete build of the current recipe."""
    stamp = venv / STAMP
    if not stamp.is_file() or not (venv / "bin" / "python").exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("digest") == recipe_digest()
    except (OSError, ValueError):
        return False


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def torch_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def patch_cxx_standard(setup_py: Path) -> int:
    """Switch every ``-std=c++14`` / ``-std=c++17`` in mmcv's setup.py to ``-std=c++20``; return how many."""
    text = setup_py.read_text()
    patched, count = re.subn(r"-std=c\+\+1[47]", "-std=c++20", text)
    setup_py.write_text(patched)
    return count


def mmcv_wheel(python: Path) -> Path:
    """The mmcv wheel built against ``python``'s torch: from build/wheels/ or built now (~20 min on 2 cores)."""
    key = f"mmcv-2.1.0-torch{torch_version(python)}-py{sys.version_info.major}{sys.version_info.minor}"
    folder = WHEELS / key
    for candidate in (folder, USER_WHEELS / key):
        found = sorted(candidate.glob("mmcv-*.whl")) if candidate.is_dir() else []
        if found:
            log(f"reusing {found[0]}")
            return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmcv-build-", dir=WHEELS) as tmp:
        work = Path(tmp)
        run([str(python), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", MMCV,
             "-d", str(work / "sdist")])
        (sdist,) = (work / "sdist").glob("mmcv-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        (source,) = (work / "src").iterdir()
        count = patch_cxx_standard(source / "setup.py")
        log(f"mmcv setup.py: {count} C++ standard flag(s) switched to -std=c++20")
        if count == 0:
            raise RuntimeError(f"no -std=c++14/17 flag found in {source / 'setup.py'}: the mmcv sdist changed")
        env = dict(os.environ, MMCV_WITH_OPS="1", FORCE_CUDA="0", MAX_JOBS=str(os.cpu_count() or 2))
        env.pop("CUDA_HOME", None)
        log("building mmcv with its CPU ops (about 20 minutes on 2 cores) ...")
        started = time.monotonic()
        wheel_cmd = [str(python), "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                     "-w", str(work / "dist"), str(source)]
        run(wheel_cmd, env=env, heartbeat="building mmcv")
        log(f"mmcv built in {time.monotonic() - started:.0f} s")
        (wheel,) = (work / "dist").glob("mmcv-*.whl")
        staged = work / "done"
        staged.mkdir()
        shutil.move(str(wheel), staged / wheel.name)
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)  # atomic: a folder with a wheel in it is always a complete wheel
    _keep_for_user(folder, key)
    return folder / wheel.name


def _keep_for_user(folder: Path, key: str) -> None:
    """Copy the built wheel's folder to the per-user cache (atomically; best effort)."""
    try:
        USER_WHEELS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="copy-", dir=USER_WHEELS) as tmp:
            shutil.copytree(folder, Path(tmp) / key)
            if not (USER_WHEELS / key).exists():
                (Path(tmp) / key).rename(USER_WHEELS / key)
        log(f"kept a copy in {USER_WHEELS / key}")
    except OSError as exc:
        log(f"could not keep a copy in {USER_WHEELS}: {exc}")


def fix_scripts(built: Path, final: Path) -> int:
    """Point the console scripts' shebangs (``bin/yolo``, ...) at ``final``, where ``built`` is renamed to."""
    fixed = 0
    for script in (built / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        with open(script, "rb") as f:
            head = f.read(2)
        if head != b"#!":
            continue
        text = script.read_bytes()
        first, _, rest = text.partition(b"\n")
        if str(built).encode() in first:
            script.write_bytes(first.replace(str(built).encode(), str(final).encode()) + b"\n" + rest)
            fixed += 1
    return fixed


def build(venv: Path, base_python: str = sys.executable) -> Path:
    """Make ``venv`` a complete trainers' venv (idempotent); return its python."""
    venv = venv.resolve()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits for the first, then finds it done
        return _build_locked(venv, base_python)


def _build_locked(venv: Path, base_python: str) -> Path:
    if is_built(venv):
        log(f"{venv} is up to date")
        return venv_python(venv)
    for stale in venv.parent.glob(venv.name + ".tmp-*"):  # left by an interrupted build
        log(f"removing {stale} (an interrupted build)")
        shutil.rmtree(stale, ignore_errors=True)
    for stale in WHEELS.glob("mmcv-build-*"):
        log(f"removing {stale} (an interrupted mmcv build)")
        shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=venv.name + ".tmp-", dir=venv.parent))
    try:
        log(f"creating a clean venv in {tmp} (renamed to {venv} when complete)")
        run([base_python, "-m", "venv", str(tmp)])
        python = venv_python(tmp)
        pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
        run([*pip, "--upgrade", "pip"])
        run([*pip, *BASE], heartbeat="installing torch, Ultralytics, mmengine")
        run([*pip, str(mmcv_wheel(python))])
        # --no-deps: mmdet's own mmcv requirement (<2.2) would send pip to the unpatched sdist.
        run([*pip, "--no-deps", MMDET])
        # (Ultralytics writes its settings file on import: into the venv, not the user's home.)
        check_env = dict(os.environ, YOLO_CONFIG_DIR=str(tmp / "ultralytics-settings"), YOLO_OFFLINE="1")
        run([str(python), "-c", "import mmcv.ops, mmdet.structures.mask, ultralytics; print('imports ok')"],
            env=check_env)
        freeze = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
        stamp = {"digest": recipe_digest(), "recipe": RECIPE, "freeze": freeze.stdout.splitlines()}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
        fix_scripts(tmp, venv)
        if venv.exists():
            shutil.rmtree(venv)
        tmp.rename(venv)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{venv} built in {time.monotonic() - started:.0f} s")
    return venv_python(venv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", nargs="?", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    build(args.venv)


if __name__ == "__main__":
    main()
