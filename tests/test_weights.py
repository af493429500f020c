"""Checkpoints: registry, verified download, safe loading, clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import pickle
import re
import socket
import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import torch

from label_anything.engine import load_model
from label_anything.engine.models import choose_model, resolve_device
from label_anything.engine.weights import CHECKPOINTS, CheckpointSpec, checkpoint_dir, download, find_spec
from label_anything.errors import CheckpointError, DeviceError


@pytest.fixture()
def file_server():
    """A loopback HTTP server; yields it. ``server.files[path] = bytes`` serves them with their length;
    ``server.cut[path] = n`` declares the full length but closes the connection after ``n`` bytes;
    ``server.no_length`` lists paths answered without Content-Length (the body ends when the connection
    closes). Unknown paths answer 404. Stopped by this fixture."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path not in server.files:
                self.send_error(404)
                return
            data = server.files[path]
            self.send_response(200)
            if path not in server.no_length:
                self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: server.cut.get(path, len(data))])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.files, server.cut, server.no_length = {}, {}, set()
    server.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def spec_for(data: bytes, url: str, name: str = "tiny") -> CheckpointSpec:
    return CheckpointSpec(name, "mobile_sam", "vit_t", f"{name}.pt", url, len(data), hashlib.sha256(data).hexdigest())


def registry_spec_for(monkeypatch, name: str, data: bytes) -> CheckpointSpec:
    """Registry entry ``name`` with the size and SHA-256 of ``data``, put in the registry (undone after)."""
    spec = dataclasses.replace(CHECKPOINTS[name], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(CHECKPOINTS, name, spec)
    return spec


def cli_download(name: str, url: str, cache: Path, capsys) -> tuple[int, str, list[str]]:
    """``label-anything download NAME --url URL``: (exit code, stdout, error lines on stderr)."""
    from label_anything.cli.parser import main

    code = main(["download", name, "--cache-dir", str(cache), "--url", url])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if "error" in line]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_entries_are_well_formed():
    assert CHECKPOINTS
    for name, spec in CHECKPOINTS.items():
        assert spec.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), name
        assert spec.size > 0, name
        url = urlsplit(spec.url)
        assert url.scheme == "https" and url.netloc and PurePosixPath(url.path).name == spec.filename, name
        assert find_spec(spec.model, spec.config) is spec, name
    # A digest or file name pasted twice would make two checkpoints indistinguishable.
    assert len({s.sha256 for s in CHECKPOINTS.values()}) == len(CHECKPOINTS)
    assert len({s.filename for s in CHECKPOINTS.values()}) == len(CHECKPOINTS)


def test_registry_covers_every_architecture():
    from label_anything.engine.sam import ARCHITECTURES

    for family, config in ARCHITECTURES:
        spec = find_spec(family, config)
        assert spec is not None and (spec.model, spec.config) == (family, config), (family, config)


def test_sam_file_names_carry_metas_hash_suffix():
    """Meta names SAM files ``sam_<config>_<6 hex>.pth`` (the hex is the start of the file's MD5, which the
    registry does not hold; it verifies SHA-256). Name, config, file name and URL must tell the same story."""
    from label_anything.engine.sam import ARCHITECTURES

    sam = [s for s in CHECKPOINTS.values() if s.model == "sam"]
    assert {s.config for s in sam} == {config for family, config in ARCHITECTURES if family == "sam"}
    suffixes = set()
    for spec in sam:
        assert spec.name == f"sam_{spec.config}", spec
        match = re.fullmatch(rf"{re.escape(spec.name)}_([0-9a-f]{{6}})\.pth", spec.filename)
        assert match, spec.filename
        assert spec.url.endswith("/" + spec.filename)
        suffixes.add(match[1])
    assert len(suffixes) == len(sam)


def test_download_verifies_and_writes_atomically(file_server, tmp_path):
    data = b"weights" * 5000
    file_server.files["/tiny.pt"] = data
    spec = spec_for(data, file_server.url + "/tiny.pt")
    seen = []

    class Bar:
        def update(self, n):
            seen.append(n)

        def close(self):
            pass

    path = download(spec, tmp_path / "cache", progress=lambda total, desc: Bar())
    assert path == checkpoint_dir(tmp_path / "cache") / "tiny.pt"
    assert path.read_bytes() == data and sum(seen) == len(data)
    # Present and valid: not fetched again.
    del file_server.files["/tiny.pt"]
    assert download(spec, tmp_path / "cache", progress=None) == path


def test_cli_download_verified_checkpoint_lands_where_models_look(file_server, random_checkpoint, tmp_path,
                                                                   monkeypatch, capsys):
    """Right bytes, registry digest matching: the file is in place (replacing a damaged one), nothing else is
    left, and ``auto`` / ``load_model`` use it."""
    data = random_checkpoint("mobile_sam", "vit_t").read_bytes()
    spec = registry_spec_for(monkeypatch, "mobile_sam", data)
    file_server.files["/mirror/mobile_sam.pt"] = data
    folder = checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / spec.filename).write_bytes(data[:1000])  # an earlier damaged copy
    code, out, errors = cli_download("mobile_sam", file_server.url + "/mirror/mobile_sam.pt", tmp_path, capsys)
    assert (code, errors) == (0, [])
    target = folder / spec.filename
    assert f"mobile_sam: {target}" in out
    assert [p.name for p in folder.iterdir()] == [spec.filename] and target.read_bytes() == data
    choice = choose_model("auto", cache_dir=tmp_path)
    assert (choice.name, choice.checkpoint) == ("mobile_sam", target)
    assert load_model("mobile_sam", "vit_t", target, device="cpu").info.weights_digest == spec.sha256


def _flipped(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.mark.parametrize("damage", ["flipped byte", "cut with length", "cut without length", "404"])
def test_cli_download_of_bad_transfer_is_one_line_and_leaves_nothing(damage, file_server, tmp_path, monkeypatch,
                                                                     capsys):
    data = bytes(range(256)) * 400
    spec = registry_spec_for(monkeypatch, "mobile_sam", data)
    path = "/mirror/" + spec.filename
    url = file_server.url + path
    if damage == "flipped byte":  # same size: only the digest can tell
        file_server.files[path] = _flipped(data)
    elif damage.startswith("cut"):
        file_server.files[path] = data
        file_server.cut[path] = len(data) // 2
        if damage == "cut without length":
            file_server.no_length.add(path)
    code, out, errors = cli_download("mobile_sam", url, tmp_path, capsys)
    assert code == 2 and len(errors) == 1 and out == "", (errors, out)
    assert spec.filename in errors[0] and url in errors[0], errors[0]
    assert "--checkpoint FILE" in errors[0], errors[0]  # every failure says how to go on without the download
    if damage == "flipped byte":
        assert "corrupt" in errors[0]
    elif damage.startswith("cut"):
        assert "corrupt" in errors[0] or "cut off" in errors[0], errors[0]
    elif damage == "404":
        assert "HTTP 404" in errors[0] and "--checkpoint" in errors[0]
    folder = checkpoint_dir(tmp_path)
    assert not folder.exists() or list(folder.iterdir()) == []  # no partial file, no .part


def test_cli_download_with_server_down_says_what_to_do(tmp_path, monkeypatch, capsys):
    spec = registry_spec_for(monkeypatch, "mobile_sam", b"weights")
    url = f"http://127.0.0.1:{free_port()}/{spec.filename}"
    code, out, errors = cli_download("mobile_sam", url, tmp_path, capsys)
    assert code == 2 and len(errors) == 1 and out == "", (errors, out)
    msg = errors[0]
    assert spec.filename in msg and url in msg and "--checkpoint FILE" in msg, msg
    assert list(checkpoint_dir(tmp_path).iterdir()) == []


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError) as err:
        choose_model("sam", "vit_h", cache_dir=tmp_path)
    msg = str(err.value)
    assert CHECKPOINTS["sam_vit_h"].filename in msg and CHECKPOINTS["sam_vit_h"].url in msg
    assert "--checkpoint" in msg and "label-anything download sam_vit_h" in msg


def test_auto_prefers_downloaded_checkpoint_else_classical(tmp_path):
    assert choose_model("auto", cache_dir=tmp_path).name == "classical"
    folder = checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / CHECKPOINTS["sam_vit_b"].filename).write_bytes(b"")
    assert (choose_model("auto", cache_dir=tmp_path).name, choose_model("auto", cache_dir=tmp_path).config) == (
        "sam", "vit_b")
    (folder / CHECKPOINTS["mobile_sam"].filename).write_bytes(b"")
    assert choose_model("auto", cache_dir=tmp_path).name == "mobile_sam"  # fastest first on CPU


def test_wrong_architecture_is_one_clear_error(random_checkpoint):
    path = random_checkpoint("mobile_sam", "vit_t")
    with pytest.raises(CheckpointError) as err:
        load_model("sam_hq", "vit_tiny", path, device="cpu")
    msg = str(err.value)
    assert str(path) in msg and "does not fit sam_hq vit_tiny" in msg and "--sam-config" in msg


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        torch.save({"weight": Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model("mobile_sam", "vit_t", path, device="cpu")
    assert not marker.exists()


def test_truncated_checkpoint_is_reported(random_checkpoint, tmp_path):
    data = random_checkpoint("mobile_sam", "vit_t").read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("mobile_sam", "vit_t", path, device="cpu")


def test_missing_file_and_bad_names():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("sam", "vit_b", "/nonexistent/sam.pth", device="cpu")
    with pytest.raises(Exception, match="unknown model"):
        choose_model("sam4")
    with pytest.raises(CheckpointError, match=r"download sam3.*gated.*HF_TOKEN"):  # known, gated, not downloaded
        choose_model("sam3", cache_dir=Path("/nonexistent-cache"))
    with pytest.raises(Exception, match="no config"):
        choose_model("mobile_sam", "vit_h")


def test_devices():
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:1")
        assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("tpu")


@pytest.mark.slow
@pytest.mark.parametrize(("family", "config"), [("sam", "vit_l"), ("sam_hq", "vit_h")])
def test_large_architectures_load(family, config, tmp_path, checkpoint_builder):
    """vit_l / vit_h are too slow to encode on 2 cores: prove construction and checkpoint loading."""
    path = checkpoint_builder(family, config, tmp_path / "big.pth")
    model = load_model(family, config, path, device="cpu")
    assert model.info.config == config and len(model.info.weights_digest) == 64
    path.unlink()
