"""`label-anything download sam3`: gated on the Hugging Face hub, fetched with HF_TOKEN.

A loopback "hub" imitates huggingface.co's resolve URL (401 without or with a bad token, 403 for an account that
has not accepted the licence, 404 for a missing file, else a 302 to a signed URL on a loopback "CDN" on another
port, with X-Linked-Size / X-Linked-Etag); the CDN serves a small fake file whose size and SHA-256 replace the
registry's for the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from label_anything.engine.weights import CHECKPOINTS, CheckpointSpec, checkpoint_dir, find_spec

FILE_PATH = "/facebook/sam3/resolve/main/sam3.pt"
TOKEN = "hf_goodTokenAcceptedLicence"
NOT_ACCEPTED = "hf_validTokenNoLicence"
DATA = bytes(range(256)) * 300  # 76.8 kB stands in for the 3.2 GiB file
GATED_MESSAGE = ("SAM 3 weights are gated: accept the licence at https://huggingface.co/facebook/sam3 and set "
                 "HF_TOKEN=<a read token from https://huggingface.co/settings/tokens>")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header) per request
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, cut: int | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True

    def error_json(self, status: int, message: str, code: str) -> None:
        self.answer(status, json.dumps({"error": message}).encode(),
                    {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})


class _Hub(_Handler):
    """huggingface.co as a gated model's resolve URL answers it."""

    def do_GET(self):
        auth = self.headers.get("Authorization")
        self.server.seen.append((self.path, auth))
        hub = self.server
        if self.path.split("?", 1)[0] != FILE_PATH:
            self.error_json(404, "Entry not found", "EntryNotFound")
        elif auth is None:
            self.error_json(401, "Access to model facebook/sam3 is restricted. You must have access to it and be "
                                 "authenticated to access it. Please log in.", "GatedRepo")
        elif auth not in (f"Bearer {TOKEN}", f"Bearer {NOT_ACCEPTED}"):
            self.error_json(401, "Invalid credentials in Authorization header", "")
        elif auth == f"Bearer {NOT_ACCEPTED}":
            self.error_json(403, "Access to model facebook/sam3 is restricted and you are not in the authorized "
                                 "list. Visit https://huggingface.co/facebook/sam3 to ask for access.", "GatedRepo")
        else:
            size, digest = hub.linked
            self.answer(302, b"", {
                "Location": f"{hub.cdn.url}/repos/3f/9a/{digest}?X-Amz-Signature=abc&X-Amz-Expires=3600",
                "X-Linked-Size": str(size), "X-Linked-Etag": f'"{digest}"', "ETag": f'"{digest}"',
            })


class _Cdn(_Handler):
    """The signed-URL host: serves whatever it holds, or cuts the transfer."""

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.answer(200, self.server.data, {"Content-Type": "application/octet-stream"}, cut=self.server.cut)


@pytest.fixture()
def hub(monkeypatch):
    """A fake hub and CDN on two loopback ports; the registry's sam3 entry points at the hub with the fake
    file's size and digest. ``hub.cdn.data`` / ``hub.cdn.cut`` / ``hub.linked`` change what they serve."""
    cdn, server = _Server(_Cdn), _Server(_Hub)
    cdn.data, cdn.cut = DATA, None
    server.cdn, server.linked = cdn, (len(DATA), hashlib.sha256(DATA).hexdigest())
    spec = dataclasses.replace(CHECKPOINTS["sam3"], url=server.url + FILE_PATH, size=len(DATA),
                               sha256=hashlib.sha256(DATA).hexdigest())
    monkeypatch.setitem(CHECKPOINTS, "sam3", spec)
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    yield server
    server.stop()
    cdn.stop()


def run_cli(args: list[str], capsys) -> tuple[int, str, list[str]]:
    """The real CLI entry: (exit code, stdout, stderr lines)."""
    from label_anything.cli.parser import main

    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    for secret in (TOKEN, NOT_ACCEPTED, "hf_wrong"):
        assert secret not in out + err  # a token is never printed
    return code, out, err.splitlines()


def download_sam3(cache: Path, capsys, *extra: str) -> tuple[int, str, list[str]]:
    return run_cli(["download", "sam3", "--cache-dir", str(cache), *extra], capsys)


def one_error(code: int, out: str, err: list[str]) -> str:
    """A failure is exit 2, nothing on stdout and one `label-anything: error:` line; returns its message."""
    errors = [line for line in err if line.startswith("label-anything: error: ")]
    assert code == 2 and out == "" and len(errors) == 1, (code, out, err)
    return errors[0].removeprefix("label-anything: error: ")


def assert_nothing_left(cache: Path) -> None:
    folder = checkpoint_dir(cache)
    assert not folder.exists() or list(folder.iterdir()) == []  # no file, no .part


def test_registry_has_gated_sam3():
    spec = CHECKPOINTS["sam3"]
    assert isinstance(spec, CheckpointSpec) and find_spec("sam3", "sam3") is spec
    assert (spec.model, spec.config, spec.filename) == ("sam3", "sam3", "sam3.pt")
    assert spec.url == "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt"
    assert (spec.size, spec.sha256) == (3450062241, "9999e2341ceef5e136daa386eecb55cb414446a00ac2b55eb2dfd2f7c3cf8c9e")
    assert spec.gate is not None and spec.gate.page == "https://huggingface.co/facebook/sam3"
    assert "SAM License" in spec.gate.licence
    assert all(other.gate is None for other in CHECKPOINTS.values() if other.name != "sam3")


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
def test_token_goes_to_the_hub_only_and_the_file_lands(variable, hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(variable, TOKEN)
    code, out, err = download_sam3(tmp_path, capsys)
    target = checkpoint_dir(tmp_path) / "sam3.pt"
    assert code == 0 and out.strip() == f"sam3: {target}", (code, out, err)
    assert [p.name for p in target.parent.iterdir()] == ["sam3.pt"] and target.read_bytes() == DATA
    assert hub.seen == [(FILE_PATH, f"Bearer {TOKEN}")]
    assert len(hub.cdn.seen) == 1 and hub.cdn.seen[0][0].startswith("/repos/")
    assert hub.cdn.seen[0][1] is None  # the redirect to another origin carries no token
    # Present and verified: not fetched again.
    assert download_sam3(tmp_path, capsys)[0] == 0 and len(hub.seen) == 1


def test_no_token_is_the_gated_sentence(hub, tmp_path, capsys):
    message = one_error(*download_sam3(tmp_path, capsys))
    assert message == GATED_MESSAGE
    assert hub.seen == [(FILE_PATH, None)] and hub.cdn.seen == []
    assert_nothing_left(tmp_path)


def test_a_refused_token_names_its_variable(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "refused the token in HF_TOKEN" in message and "HTTP 401" in message, message
    assert "https://huggingface.co/settings/tokens" in message
    assert hub.cdn.seen == []
    assert_nothing_left(tmp_path)


def test_a_token_that_cannot_be_one_is_refused_before_any_request(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_two words")
    message = one_error(*download_sam3(tmp_path, capsys))
    assert message.startswith("HUGGING_FACE_HUB_TOKEN holds characters") and "settings/tokens" in message
    assert hub.seen == []


def test_licence_not_accepted_says_where_to_accept_it(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", NOT_ACCEPTED)
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "no access to SAM 3" in message and "HTTP 403" in message, message
    assert "accept Meta's SAM License at https://huggingface.co/facebook/sam3" in message
    assert "label-anything download sam3" in message
    assert hub.cdn.seen == []
    assert_nothing_left(tmp_path)


def test_missing_file_is_a_404_with_what_to_do(hub, tmp_path, monkeypatch, capsys):
    spec = dataclasses.replace(CHECKPOINTS["sam3"], url=hub.url + "/facebook/sam3/resolve/main/renamed.pt")
    monkeypatch.setitem(CHECKPOINTS, "sam3", spec)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "HTTP 404" in message and spec.url in message, message
    assert "https://huggingface.co/facebook/sam3" in message and "--checkpoint FILE" in message
    assert_nothing_left(tmp_path)


def test_hub_down_is_one_line(hub, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = dataclasses.replace(CHECKPOINTS["sam3"], url=f"http://127.0.0.1:{port}{FILE_PATH}")
    monkeypatch.setitem(CHECKPOINTS, "sam3", spec)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "connection failed or was cut off" in message and "try again" in message, message
    assert_nothing_left(tmp_path)


def test_hub_serving_another_file_is_refused_before_the_transfer(hub, tmp_path, monkeypatch, capsys):
    """The hub's X-Linked-Etag / X-Linked-Size disagree with the registry: nothing is fetched from the CDN."""
    hub.linked = (3450062241, "9" * 64)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "now serves another sam3.pt" in message and "upgrade label-anything" in message, message
    assert hub.cdn.seen == []
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("damage", ["cut", "wrong size", "wrong sha256"])
def test_bad_transfer_from_the_cdn_leaves_nothing(damage, hub, tmp_path, monkeypatch, capsys):
    if damage == "cut":
        hub.cdn.cut = len(DATA) // 3
    elif damage == "wrong size":
        hub.cdn.data = DATA + b"extra"
    else:
        i = len(DATA) // 2
        hub.cdn.data = DATA[:i] + bytes([DATA[i] ^ 1]) + DATA[i + 1 :]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    message = one_error(*download_sam3(tmp_path, capsys))
    assert "sam3.pt" in message and "--checkpoint FILE" in message, message
    if damage == "cut":
        assert "cut off" in message and "try again" in message
    else:
        assert "corrupt" in message and "try again" in message
        assert ("expected 76800 bytes" in message) and (damage != "wrong size" or "76805 bytes" in message)
    assert hub.cdn.seen[0][1] is None
    assert_nothing_left(tmp_path)


def test_a_mirror_gets_no_token_and_is_still_verified(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    mirror = hub.cdn.url + "/mirror/sam3.pt"
    code, out, err = download_sam3(tmp_path, capsys, "--url", mirror)
    target = checkpoint_dir(tmp_path) / "sam3.pt"
    assert code == 0 and target.read_bytes() == DATA, (code, out, err)
    assert hub.seen == [] and hub.cdn.seen == [("/mirror/sam3.pt", None)]
    # A mirror serving other bytes is refused like any corrupt download.
    target.unlink()
    hub.cdn.data = DATA[:-1] + b"\0"
    message = one_error(*download_sam3(tmp_path, capsys, "--url", mirror))
    assert "corrupt" in message and mirror in message
    assert_nothing_left(tmp_path)


def test_models_lists_sam3_as_gated(tmp_path, capsys):
    code, out, _ = run_cli(["models", "--cache-dir", str(tmp_path)], capsys)
    line = next(line for line in out.splitlines() if " sam3 " in line)
    assert code == 0 and "gated" in line and "HF_TOKEN" in line and "huggingface.co/facebook/sam3" in line
