"""Checkpoints: registry, verified download, safe loading, clear errors."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import pytest
import torch

from label_anything.engine import load_model
from label_anything.engine.models import choose_model, resolve_device
from label_anything.engine.weights import CHECKPOINTS, CheckpointSpec, checkpoint_dir, download, find_spec
from label_anything.errors import CheckpointError, DeviceError


@pytest.fixture()
def file_server(tmp_path):
    """A loopback HTTP server over a folder; yields (base_url, folder). Stopped by this fixture."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", root
    server.shutdown()
    server.server_close()


def spec_for(data: bytes, url: str, name: str = "tiny") -> CheckpointSpec:
    return CheckpointSpec(name, "mobile_sam", "vit_t", f"{name}.pt", url, len(data), hashlib.sha256(data).hexdigest())


def test_registry_covers_every_architecture():
    from label_anything.engine.sam import ARCHITECTURES

    for family, config in ARCHITECTURES:
        spec = find_spec(family, config)
        assert spec is not None, (family, config)
        assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
        assert len(spec.sha256) == 64 and spec.size > 10_000_000
    # The SAM file names end in the first 6 hex digits of their MD5, as Meta published them.
    assert CHECKPOINTS["sam_vit_b"].filename == "sam_vit_b_01ec64.pth"


def test_download_verifies_and_writes_atomically(file_server, tmp_path):
    base, root = file_server
    data = b"weights" * 5000
    (root / "tiny.pt").write_bytes(data)
    spec = spec_for(data, base + "tiny.pt")
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
    (root / "tiny.pt").unlink()
    assert download(spec, tmp_path / "cache", progress=None) == path


def test_corrupt_download_leaves_nothing(file_server, tmp_path):
    base, root = file_server
    (root / "tiny.pt").write_bytes(b"x" * 100)
    spec = spec_for(b"y" * 100, base + "tiny.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        download(spec, tmp_path, progress=None)
    assert list(checkpoint_dir(tmp_path).iterdir()) == []


def test_unreachable_url_names_file_url_and_option(tmp_path):
    spec = spec_for(b"z", "http://127.0.0.1:9/nothing.pt")  # port 9: nothing listens
    with pytest.raises(CheckpointError) as err:
        download(spec, tmp_path, progress=None, timeout=2)
    msg = str(err.value)
    assert "tiny.pt" in msg and "http://127.0.0.1:9/nothing.pt" in msg and "--checkpoint" in msg
    assert list(checkpoint_dir(tmp_path).iterdir()) == []


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError) as err:
        choose_model("sam", "vit_h", cache_dir=tmp_path)
    msg = str(err.value)
    assert "sam_vit_h_4b8939.pth" in msg and CHECKPOINTS["sam_vit_h"].url in msg
    assert "--checkpoint" in msg and "label-anything download sam_vit_h" in msg


def test_auto_prefers_downloaded_checkpoint_else_classical(tmp_path):
    assert choose_model("auto", cache_dir=tmp_path).name == "classical"
    folder = checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert (choose_model("auto", cache_dir=tmp_path).name, choose_model("auto", cache_dir=tmp_path).config) == (
        "sam", "vit_b")
    (folder / "mobile_sam.pt").write_bytes(b"")
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
        choose_model("sam3")
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
