"""``label-anything up``: one command instead of the original tool's fifteen manual steps.

Starts Label Studio and ``label-anything serve`` as child processes of this one, provisions the project
(user, label config, local-files storage of the images, interactive backend) through the REST API and
stays in the foreground until Ctrl+C (or SIGTERM), which stops both servers.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from label_anything.app.atomic import write_text_atomic
from label_anything.app.labelstudio_process import (
    label_studio_installed,
    port_in_use,
    spawn,
    start_label_studio,
    stop_process,
    wait_http,
)
from label_anything.engine.models import choose_model
from label_anything.engine.weights import CHECKPOINTS, CheckpointSpec, DownloadError, checkpoint_dir, download
from label_anything.errors import LabelAnythingError
from label_anything.labelstudio.client import LabelStudioClient, LabelStudioError, find_images, label_config

log = logging.getLogger("label_anything.up")

DEMO_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
DEMO_LABELS = "cat,person,cup,rocket"
LABEL_STUDIO_START_TIMEOUT = 300.0  # about 40 s on 2 cores, minutes on a first start (database migrations)
BACKEND_START_TIMEOUT = 180.0
FIRST_RUN_CHECKPOINT = "mobile_sam"  # what a first run without any checkpoint downloads: small, fast on a CPU


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "label-anything"


@dataclass(frozen=True, kw_only=True)
class UpOptions:
    """What ``up`` was asked for (names as the command line's options; see ``cli.up``)."""

    images: Path | None = None  # the folder to label; None with ``demo``
    demo: bool = False  # label scikit-image's sample photos instead
    labels: str | None = None  # comma separated; None: "object" (with ``demo``: ``DEMO_LABELS``)
    port: int = 8080  # Label Studio's
    backend_port: int = 8003
    data_dir: Path | None = None  # None: ``default_data_dir()``
    username: str | None = None  # None: remembered in the data dir, else generated (``load_credentials``)
    password: str | None = None
    user_token: str | None = None
    out_poly: bool = False  # the backend also suggests polygons
    # the backend's model (``cli.options.add_model_arguments``)
    model_name: str = "auto"
    sam_config: str | None = None
    checkpoint: str | Path | None = None
    device: str = "auto"
    decoder: str = "torch"
    cache_dir: Path | None = None
    cache_disk_gb: float
    # ``auto`` with no checkpoint in the cache: download MobileSAM first (``prepare_model``)
    download: bool = True
    download_url: str | None = None  # None: the official URL (``CHECKPOINTS["mobile_sam"].url``)


# -- pieces ------------------------------------------------------------------------------------------
@dataclass
class Credentials:
    username: str
    password: str
    token: str


def load_credentials(data_dir: Path, username: str | None, password: str | None, token: str | None) -> Credentials:
    """Given values win; the rest come from ``credentials.json`` in the data dir, else are generated.

    Saved back so a rerun logs in with the same user: Label Studio creates the user only once and keeps
    the first token. The file is readable by its owner only from its first byte (see ``_write_private``).
    """
    path = data_dir / "credentials.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    creds = Credentials(
        username=username or saved.get("username") or "admin@example.com",
        password=password or saved.get("password") or secrets.token_urlsafe(12),
        token=token or saved.get("token") or secrets.token_hex(20),
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(path, json.dumps(creds.__dict__, indent=1))
    return creds


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in a file of mode 0600 from the start: ``write_text_atomic`` writes a
    temporary file that ``mkstemp`` creates 0600 whatever the umask, then renames it over ``path``. Writing in
    place and chmod-ing afterwards leaves the password readable by all in between (and for good when the chmod
    is never reached), and keeps the mode an older file had."""
    write_text_atomic(path, text)


def write_demo_images(folder: Path) -> Path:
    """scikit-image's sample photos as JPEGs (written once)."""
    try:
        import skimage.data
    except ImportError:
        raise LabelAnythingError("--demo needs scikit-image: pip install scikit-image") from None
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_IMAGES:
        path = folder / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=92)
    return folder


def _remembered_project(data_dir: Path, folder: Path) -> int | None:
    path = data_dir / "projects.json"
    return json.loads(path.read_text()).get(str(folder)) if path.exists() else None


def _remember_project(data_dir: Path, folder: Path, project_id: int) -> None:
    path = data_dir / "projects.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    known[str(folder)] = project_id
    path.write_text(json.dumps(known, indent=1))


def _check_ports(options: UpOptions) -> None:
    if options.port == options.backend_port:
        raise LabelAnythingError(f"--port and --backend-port are both {options.port}: give them different values")
    for port, flag in ((options.port, "--port"), (options.backend_port, "--backend-port")):
        if port_in_use(port):
            raise LabelAnythingError(
                f"port {port} is in use (another Label Studio or `label-anything up`?): stop it or pass {flag} N"
            )


def _backend_command(options: UpOptions) -> list[str]:
    """``label-anything serve`` with this Python and the model options given to ``up``."""
    cmd = [sys.executable, "-m", "label_anything", "--log-level", "INFO", "serve",
           "--host", "127.0.0.1", "--port", str(options.backend_port),
           "--model-name", options.model_name, "--device", options.device, "--decoder", options.decoder,
           "--cache-disk-gb", f"{options.cache_disk_gb:g}", "--out-mask", "--out-bbox",
           "--out-poly" if options.out_poly else "--no-out-poly"]
    for flag, value in (("--sam-config", options.sam_config), ("--checkpoint", options.checkpoint),
                        ("--cache-dir", options.cache_dir)):
        if value:
            cmd += [flag, str(value)]
    return cmd


def prepare_model(options: UpOptions) -> UpOptions:
    """Decide the backend's model before anything starts: ``options`` with the model it will load.

    ``--model-name auto`` with no checkpoint in the cache downloads MobileSAM (verified by size and SHA-256,
    a progress bar on stderr) and names it with its file; with ``--no-download``, or when the download fails
    (host down, HTTP error, corrupt file, cache not writable), one line says why and what to do, and the
    backend runs ``classical``. A checkpoint already cached is left to ``auto`` (which picks by device), and
    any other request is only checked: a missing checkpoint is a one-line error here, not a backend that
    dies after Label Studio started.
    """
    choice = choose_model(options.model_name, options.sam_config, options.checkpoint, cache_dir=options.cache_dir)
    if options.model_name != "auto" or choice.name != "classical":
        return options
    spec = CHECKPOINTS[FIRST_RUN_CHECKPOINT]
    folder = checkpoint_dir(options.cache_dir)
    classical = replace(options, model_name="classical", sam_config=None, checkpoint=None)
    if not options.download:
        print(f"no SAM checkpoint in {folder} and downloads are off (--no-download): the backend uses the "
              "weight-free `classical` engine (GrabCut); for SAM run `label-anything download mobile_sam`, or "
              "`up` without --no-download", flush=True)
        return classical
    try:
        path = _download_first_checkpoint(spec, options)
    except (DownloadError, OSError) as exc:
        reason = exc.reason if isinstance(exc, DownloadError) else f"cannot write to {folder} ({exc.strerror or exc})"
        reason = " ".join(reason.split())  # one line, whatever the exception's text holds
        print(f"could not download MobileSAM: {reason}; the backend uses the weight-free `classical` engine "
              "(GrabCut) for now: run `up` again to retry, `label-anything download mobile_sam --url MIRROR`, "
              "or pass --model-name mobile_sam --checkpoint FILE (--no-download skips this)", flush=True)
        return classical
    return replace(options, model_name=spec.model, sam_config=spec.config, checkpoint=path)


def _download_first_checkpoint(spec: CheckpointSpec, options: UpOptions) -> Path:
    source = options.download_url or spec.url
    print(f"no SAM checkpoint in {checkpoint_dir(options.cache_dir)}: downloading MobileSAM "
          f"({spec.size / 2**20:.0f} MiB, checked by size and SHA-256) from {source} ...", flush=True)
    path = download(spec, options.cache_dir, url=options.download_url).resolve()
    print(f"downloaded {path}: the backend uses mobile_sam", flush=True)
    return path


def project_config(labels: list[str], model_name: str) -> str:
    """The label config ``up`` gives the project: ``label_config(labels)``; for SAM 3 (``--model-name sam3``,
    which ``auto`` never picks) with the TextArea to type a concept in (``CONCEPT_TEXTAREA``)."""
    return label_config(labels, concept=model_name == "sam3")


class _Stop:
    """SIGINT/SIGTERM set a flag instead of raising, so start-up and shutdown are never cut in half."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        self.event.set()

    def install(self) -> dict[int, object]:
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}


# -- the command -------------------------------------------------------------------------------------
def run_up(options: UpOptions) -> int:
    """Start both servers, provision the project, wait for Ctrl+C (or SIGTERM, or a server that exits), stop
    both. Returns the exit code (0); a mistake or a server that fails raises ``LabelAnythingError``."""
    if not label_studio_installed():
        raise LabelAnythingError("Label Studio is not installed: pip install 'label-anything[labelstudio]'")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll otherwise
    data_dir = (options.data_dir or default_data_dir()).expanduser().resolve()
    if options.demo:
        # its own parent folder: Label Studio serves everything under the document root
        folder = write_demo_images(data_dir / "demo" / "images")
    else:
        folder = options.images.expanduser().resolve()
        if not folder.is_dir():
            raise LabelAnythingError(f"{options.images} is not a folder: pass --images DIR with your images")
    if folder.parent == folder:
        raise LabelAnythingError("the images folder cannot be the file system root: use a sub-folder")
    images = find_images(folder)
    if not images:
        raise LabelAnythingError(
            f"no images in {folder} (looked for {', '.join(('.jpg', '.png', '.webp', '...'))}): "
            "put images there or pass another --images DIR"
        )
    given = options.labels or (DEMO_LABELS if options.demo else "object")
    labels = [s.strip() for s in given.split(",") if s.strip()]
    label_config(labels)  # refuses no labels before anything starts
    _check_ports(options)
    options = prepare_model(options)  # before anything starts: a first run downloads MobileSAM here
    config = project_config(labels, options.model_name)
    creds = load_credentials(data_dir, options.username, options.password, options.user_token)

    stop = _Stop()
    previous = stop.install()
    procs: list[subprocess.Popen] = []
    logs = data_dir / "logs"
    started = time.monotonic()
    try:
        ls_url = f"http://localhost:{options.port}"
        # Local files must be *under* the document root, never the root itself: root at the parent.
        ls_log = logs / "label-studio.log"
        print(f"starting Label Studio on {ls_url} (log: {ls_log}) ...", flush=True)
        ls = start_label_studio(options.port, data_dir / "label-studio", folder.parent, creds.username,
                                creds.password, creds.token, ls_log)
        procs.append(ls)
        backend_url = f"http://127.0.0.1:{options.backend_port}"
        backend_log = logs / "backend.log"
        print(f"starting the backend on {backend_url} (log: {backend_log}) ...", flush=True)
        backend = spawn(_backend_command(options), backend_log, {
            "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": creds.token,
            "LOCAL_FILES_DOCUMENT_ROOT": str(folder.parent)})
        procs.append(backend)

        wait_http(backend_url + "/health", backend, BACKEND_START_TIMEOUT, backend_log, stop.event.is_set)
        wait_http(ls_url + "/health", ls, LABEL_STUDIO_START_TIMEOUT, ls_log, stop.event.is_set)
        if stop.event.is_set():
            return _shutdown(procs)
        model_version = httpx.get(backend_url + "/health", timeout=5).json().get("model_version", "?")
        project_id, n_tasks = provision(ls_url, creds, folder, config, backend_url, data_dir)
        print(f"ready in {time.monotonic() - started:.0f} s: {ls_url}/projects/{project_id}/data "
              f"({n_tasks} tasks, labels {', '.join(labels)}, backend {model_version} connected)", flush=True)
        print(f"log in as {creds.username} with password {creds.password} (saved in {data_dir / 'credentials.json'})"
              "\nin a task: switch Auto-Annotation on, pick Auto-Detect → smart keypoint or rectangle, a label, "
              "click the object.\nCtrl+C stops both servers.", flush=True)
        while not stop.event.wait(1.0):
            for proc, name, plog in ((ls, "Label Studio", ls_log), (backend, "the backend", backend_log)):
                if proc.poll() is not None:
                    _shutdown(procs)
                    raise LabelAnythingError(f"{name} exited with code {proc.returncode}; see {plog}")
        return _shutdown(procs)
    finally:
        for proc in procs:
            stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shutdown(procs: list[subprocess.Popen]) -> int:
    print("stopping Label Studio and the backend ...", flush=True)
    for proc in reversed(procs):
        stop_process(proc)
    print("stopped", flush=True)
    return 0


def provision(ls_url: str, creds: Credentials, folder: Path, config: str, backend_url: str,
              data_dir: Path) -> tuple[int, int]:
    """Project for ``folder`` (reused), its local-files storage synced, the backend connected.

    Returns (project id, number of tasks).
    """
    client = LabelStudioClient(ls_url, creds.token)
    try:
        try:
            client.whoami()
        except LabelStudioError:
            raise LabelAnythingError(
                f"Label Studio refused the saved API token for {creds.username}: the data dir holds another "
                "user's database; pass --user-token (see the user's Account & Settings) or another --data-dir"
            ) from None
        project, created = client.ensure_project(folder.name, config, _remembered_project(data_dir, folder))
        _remember_project(data_dir, folder, project["id"])
        storage = client.ensure_local_storage(project["id"], folder, folder.name)
        client.sync_storage(storage["id"])
        n_tasks = len(client.tasks(project["id"]))
        ml = client.connect_backend(project["id"], backend_url)
        log.info("project %s %s; backend %s %s", project["id"], "created" if created else "reused", ml["id"],
                 ml.get("readable_state"))
        return project["id"], n_tasks
    finally:
        client.close()
