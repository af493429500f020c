"""``label-anything up`` on a first run: MobileSAM is downloaded (verified) before anything starts, and
``--no-download`` or a failed download goes on with ``classical`` after one line saying why.

A loopback HTTP server stands in for the model host (``--download-url`` points ``up`` at it); the file it
serves is a random-weight MobileSAM checkpoint of the real architecture, and the registry's size and SHA-256
are patched to that file's: no real download is ever made. Label Studio is not started: its start is
replaced by an idle process and the backend's by a recorder of the command ``up`` would run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from label_anything import cli
from label_anything.app import up
from label_anything.app.labelstudio_process import free_port
from label_anything.engine import load_model
from label_anything.engine import weights as weights_module
from label_anything.engine.models import choose_model
from label_anything.engine.weights import CHECKPOINTS, checkpoint_dir, file_sha256
from label_anything.errors import LabelAnythingError

STOPPED = "test: stopped before the backend starts"


@pytest.fixture()
def model_host():
    """A loopback server: ``host.files[path] = bytes`` serves them, anything else is 404; ``host.requests``
    lists the paths asked for."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            host.requests.append(self.path)
            data = host.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host.files, host.requests = {}, []
    host.url = f"http://127.0.0.1:{host.server_port}"
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    yield host
    host.shutdown()
    host.server_close()


@pytest.fixture()
def mobile_sam_bytes(random_checkpoint, monkeypatch) -> bytes:
    """A random-weight MobileSAM checkpoint, with the registry's size and SHA-256 patched to its own."""
    data = random_checkpoint("mobile_sam", "vit_t").read_bytes()
    spec = dataclasses.replace(CHECKPOINTS["mobile_sam"], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(CHECKPOINTS, "mobile_sam", spec)
    return data


@pytest.fixture()
def no_label_studio(monkeypatch):
    """``up`` runs its real decisions; Label Studio's start is an idle process of its own group (which ``up``
    stops), and the backend's start records its command and stops ``up`` with a usage error."""
    launched: list[list[str]] = []

    def fake_start_label_studio(*args, **kwargs):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

    def fake_spawn(cmd, *args, **kwargs):
        launched.append(cmd)
        raise LabelAnythingError(STOPPED)

    monkeypatch.setattr(up, "label_studio_installed", lambda: True)
    monkeypatch.setattr(up, "start_label_studio", fake_start_label_studio)
    monkeypatch.setattr(up, "spawn", fake_spawn)
    return launched


def images_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(folder / "a.png")
    return folder


def run_up(tmp_path: Path, *extra: str, capsys) -> tuple[int, list[str], str]:
    """``label-anything up`` on a folder with an empty cache: (exit code, stdout lines, stderr)."""
    code = cli.main(["up", "--images", str(images_folder(tmp_path)), "--data-dir", str(tmp_path / "data"),
                     "--cache-dir", str(tmp_path / "cache"), "--port", str(free_port()),
                     "--backend-port", str(free_port()), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out.splitlines(), err


def option(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def cache_files(tmp_path: Path) -> list[str]:
    folder = checkpoint_dir(tmp_path / "cache")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the download branch -----------------------------------------------------------------------------------
def test_prepare_model_downloads_verified_mobile_sam_then_reuses_it(model_host, mobile_sam_bytes, tmp_path, capsys):
    model_host.files["/mirror/mobile_sam.pt"] = mobile_sam_bytes
    cache = tmp_path / "cache"
    options = up.UpOptions(images=tmp_path, cache_dir=cache, cache_disk_gb=4.0,
                           download_url=model_host.url + "/mirror/mobile_sam.pt")
    assert choose_model("auto", cache_dir=cache).name == "classical"  # nothing cached: a first run

    chosen = up.prepare_model(options)

    target = (checkpoint_dir(cache) / "mobile_sam.pt").resolve()
    assert (chosen.model_name, chosen.sam_config, chosen.checkpoint) == ("mobile_sam", "vit_t", target)
    assert target.read_bytes() == mobile_sam_bytes and cache_files(tmp_path) == ["mobile_sam.pt"]  # no .part left
    assert file_sha256(target) == CHECKPOINTS["mobile_sam"].sha256
    out, err = capsys.readouterr()
    assert "downloading MobileSAM" in out and model_host.url in out and "SHA-256" in out, out
    assert "mobile_sam.pt" in err and "100%" in err, err  # the progress bar, on stderr
    assert model_host.requests == ["/mirror/mobile_sam.pt"]
    # What the backend is started with, and that it loads: MobileSAM from that very file.
    cmd = up._backend_command(chosen)
    assert (option(cmd, "--model-name"), option(cmd, "--sam-config"), option(cmd, "--checkpoint")) == (
        "mobile_sam", "vit_t", str(target))
    model = load_model(chosen.model_name, chosen.sam_config, chosen.checkpoint, device="cpu")
    assert (model.info.name, model.info.config) == ("mobile_sam", "vit_t")
    assert model.info.weights_digest == CHECKPOINTS["mobile_sam"].sha256

    # The next run finds it in the cache: nothing is fetched, and `auto` (which picks by device) stays.
    assert up.prepare_model(options) == options
    assert model_host.requests == ["/mirror/mobile_sam.pt"]
    assert choose_model("auto", cache_dir=cache).checkpoint == checkpoint_dir(cache) / "mobile_sam.pt"


def test_up_downloads_before_label_studio_starts(model_host, mobile_sam_bytes, no_label_studio, tmp_path, capsys,
                                                 monkeypatch):
    """Through the command line, the URL from its environment variable: the download comes first, and the
    backend is started on the downloaded file."""
    model_host.files["/mobile_sam.pt"] = mobile_sam_bytes
    monkeypatch.setenv("LABEL_ANYTHING_DOWNLOAD_URL", model_host.url + "/mobile_sam.pt")
    code, out, err = run_up(tmp_path, capsys=capsys)
    assert code == 2 and STOPPED in err  # stopped by the test at the backend's start
    downloading = next(i for i, line in enumerate(out) if "downloading MobileSAM" in line)
    starting = next(i for i, line in enumerate(out) if line.startswith("starting Label Studio"))
    assert downloading < starting, out
    assert not any("classical" in line for line in out), out
    (cmd,) = no_label_studio
    target = checkpoint_dir(tmp_path / "cache") / "mobile_sam.pt"
    assert (option(cmd, "--model-name"), option(cmd, "--checkpoint")) == ("mobile_sam", str(target.resolve()))
    assert target.read_bytes() == mobile_sam_bytes


# -- the classical branch ----------------------------------------------------------------------------------
FAILURES = {
    # case: (why, in the one line)
    "--no-download": "--no-download",
    "LABEL_ANYTHING_DOWNLOAD=0": "--no-download",
    "HTTP 404": "answered HTTP 404",
    "connection refused": "failed or was cut off",
    "corrupt file": "is corrupt",
    "cache not writable": "cannot write to",
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_without_the_download_up_says_why_in_one_line_and_goes_on_with_classical(
        case, model_host, mobile_sam_bytes, no_label_studio, tmp_path, capsys, monkeypatch):
    url = model_host.url + "/mobile_sam.pt"
    model_host.files["/mobile_sam.pt"] = mobile_sam_bytes  # there, unless the case says otherwise
    extra = ["--download-url", url]
    if case == "--no-download":
        extra.append("--no-download")
    elif case == "LABEL_ANYTHING_DOWNLOAD=0":
        monkeypatch.setenv("LABEL_ANYTHING_DOWNLOAD", "0")
    elif case == "HTTP 404":
        del model_host.files["/mobile_sam.pt"]
    elif case == "connection refused":
        url = f"http://127.0.0.1:{free_port()}/mobile_sam.pt"
        extra = ["--download-url", url]
    elif case == "corrupt file":
        i = len(mobile_sam_bytes) // 2  # same size: only the SHA-256 tells
        model_host.files["/mobile_sam.pt"] = mobile_sam_bytes[:i] + bytes([mobile_sam_bytes[i] ^ 1]) + \
            mobile_sam_bytes[i + 1:]
    elif case == "cache not writable":
        (tmp_path / "cache").write_text("a file where the cache folder should be")

    code, out, err = run_up(tmp_path, *extra, capsys=capsys)

    assert code == 2 and STOPPED in err
    (cmd,) = no_label_studio  # up went on: the backend is started, on the weight-free engine
    assert (option(cmd, "--model-name"), option(cmd, "--checkpoint"), option(cmd, "--sam-config")) == (
        "classical", None, None)
    (line,) = [line for line in out if "classical" in line]  # one line says so ...
    assert FAILURES[case] in line, line  # ... why ...
    assert "label-anything download mobile_sam" in line, line  # ... and what to do
    if case in ("HTTP 404", "connection refused", "corrupt file"):
        assert url in line and line.startswith("could not download MobileSAM"), line
    if case.endswith("=0") or case.startswith("--"):
        assert model_host.requests == [] and not any("downloading" in o for o in out)
    if case != "cache not writable":
        assert cache_files(tmp_path) == []  # no half or corrupt file left to be picked up by `auto` later
    starting = next(i for i, o in enumerate(out) if o.startswith("starting Label Studio"))
    assert out.index(line) < starting  # said before anything starts


def test_a_bad_download_variable_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LABEL_ANYTHING_DOWNLOAD", "sometimes")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["up", "--images", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LABEL_ANYTHING_DOWNLOAD='sometimes'" in err, err


# -- what is not downloaded --------------------------------------------------------------------------------
@pytest.mark.parametrize("given", [["--model-name", "sam"], ["--model-name", "mobile_sam"],
                                   ["--checkpoint", "x.pth"]])
def test_up_checks_an_explicit_model_before_starting_and_downloads_nothing(given, no_label_studio, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(httpx, "stream", _no_network)
    code, out, err = run_up(tmp_path, *given, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and STOPPED not in err, err
    assert no_label_studio == [] and not any(line.startswith("starting") for line in out)
    if given[0] == "--model-name":
        assert "label-anything download" in err and "--checkpoint" in err, err
    else:
        assert "--checkpoint needs --model-name" in err, err


def _no_network(*args, **kwargs):
    raise AssertionError("a download was attempted")


def test_serve_and_batch_commands_never_download(tmp_path, capsys, monkeypatch):
    """``auto`` with an empty cache: ``serve`` and ``segment`` use classical, the batch commands refuse it;
    none of them downloads."""
    from label_anything.cli.options import load_model_from_args

    monkeypatch.setattr(httpx, "stream", _no_network)
    monkeypatch.setattr(weights_module, "download", _no_network)
    cache = str(tmp_path / "cache")
    args = cli.build_parser().parse_args(["serve", "--cache-dir", cache])
    assert load_model_from_args(args).info.name == "classical"
    folder = images_folder(tmp_path)
    assert cli.main(["segment", str(folder / "a.png"), "--point", "10,10", "--out", str(tmp_path / "m.png"),
                     "--cache-dir", cache]) == 0
    assert cli.main(["precompute", "--images", str(folder), "--cache-dir", cache]) == 2
    assert "does not fall back to GrabCut" in capsys.readouterr().err
    (tmp_path / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    assert cli.main(["boxes-to-masks", str(tmp_path / "coco.json"), "--images", str(folder), "--out",
                     str(tmp_path / "out.json"), "--cache-dir", cache]) == 2
    assert "does not fall back to GrabCut" in capsys.readouterr().err
    assert cache_files(tmp_path) == []
