"""``serve`` and ``up`` read their defaults from environment variables: a bad value is one usage line that
names the variable (exit 2), only for the command that reads it; ``up``'s credentials file is private."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from label_anything import cli
from label_anything.app import up
from label_anything.cli import serve as server
from label_anything.cli import up as up_command
from label_anything.cli.options import SECRET_WORDS
from label_anything.cli.serve import _serve_options

SERVE_ENV = [
    ("LABEL_ANYTHING_PORT", "80O3", "not a whole number"),
    ("LABEL_ANYTHING_PORT", "70000", "not a port number"),
    ("LABEL_ANYTHING_POLY_TOLERANCE", "abc", "not a number"),
    ("LABEL_ANYTHING_POLY_TOLERANCE", "nan", "not a finite number"),
    ("LABEL_ANYTHING_POLY_MIN_AREA", "-1", "must be 0 or more"),
    ("LABEL_ANYTHING_OUT_BBOX", "maybe", "not on or off"),
    ("LABEL_ANYTHING_OUT_MASK", "2", "not on or off"),
    ("LABEL_ANYTHING_OUT_POLY", "yes please", "not on or off"),
    ("LABEL_ANYTHING_REFINE", "sometimes", "not on or off"),
    ("LABEL_ANYTHING_BOXES_TO_MASKS", "y", "not on or off"),
    ("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "-1", "must be positive"),
    ("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "1.5", "not a whole number"),
    ("LABEL_ANYTHING_WORKERS", "0", "must be positive"),
    ("LABEL_ANYTHING_MAX_IMAGE_PIXELS", "many", "not a whole number"),
    ("LABEL_ANYTHING_BASIC_AUTH", "garbage", "not USER:PASSWORD"),
    ("LABEL_ANYTHING_BASIC_AUTH", "user:", "not USER:PASSWORD"),
]
UP_ENV = [
    ("LABEL_STUDIO_PORT", "80 80", "not a whole number"),
    ("LABEL_STUDIO_PORT", "0", "not a port number"),
    ("LABEL_ANYTHING_PORT", "80O3", "not a whole number"),
]


@pytest.fixture(autouse=True)
def _never_start(monkeypatch):
    """A value wrongly accepted must fail the test, not start Label Studio or a server that never returns."""

    def started(args):
        pytest.fail(f"the command ran with {vars(args)}")

    monkeypatch.setattr(server, "cmd_serve", started)
    monkeypatch.setattr(up_command, "cmd_up", started)


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("name", "value", "reason"), SERVE_ENV)
def test_bad_serve_environment_value_is_one_line_naming_it(monkeypatch, capsys, name, value, reason):
    monkeypatch.setenv(name, value)
    err = _usage_error(capsys, ["serve"])
    shown = "…" if any(word in name for word in SECRET_WORDS) else value  # a credential is never echoed
    assert err.startswith("label-anything serve: error:") and f"{name}={shown!r}" in err and reason in err


@pytest.mark.parametrize(("name", "value", "reason"), UP_ENV)
def test_bad_up_environment_value_is_one_line_naming_it(monkeypatch, capsys, name, value, reason):
    monkeypatch.setenv(name, value)
    err = _usage_error(capsys, ["up", "--demo"])
    assert err.startswith("label-anything up: error:") and f"{name}={value!r}" in err and reason in err


def test_bad_value_only_matters_to_the_command_that_reads_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LABEL_STUDIO_PORT", "x")  # read by `up` only
    monkeypatch.setenv("LABEL_ANYTHING_POLY_TOLERANCE", "abc")  # read by `serve` only
    assert cli.main(["models", "--cache-dir", str(tmp_path)]) == 0
    assert "error" not in capsys.readouterr().err
    # a flag given on the command line wins over the variable, which is then not looked at
    args = cli.build_parser().parse_args(["serve", "--poly-tolerance", "2.5"])
    assert args.poly_tolerance == 2.5


def test_good_environment_values_are_used(monkeypatch):
    for name, value in [
        ("LABEL_ANYTHING_PORT", " 9011 "),
        ("LABEL_ANYTHING_OUT_BBOX", "ON"),
        ("LABEL_ANYTHING_OUT_MASK", "0"),
        ("LABEL_ANYTHING_REFINE", "no"),
        ("LABEL_ANYTHING_POLY_TOLERANCE", "0.5"),
        ("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "64"),
        ("LABEL_ANYTHING_BASIC_AUTH", "ls:s3:cret"),
    ]:
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(["serve"])
    assert (args.port, args.out_bbox, args.out_mask, args.refine) == (9011, True, False, False)
    assert (args.poly_tolerance, args.embedding_cache_mb) == (0.5, 64)
    options = _serve_options(args)
    assert options.basic_auth == ("ls", "s3:cret") and options.outputs.types() == ("rectanglelabels",)
    assert options.refine is False
    # the command line still wins
    args = cli.build_parser().parse_args(["serve", "--out-mask", "--basic-auth", "a:b", "--port", "9012"])
    assert (args.out_mask, _serve_options(args).basic_auth, args.port) == (True, ("a", "b"), 9012)


def test_up_ports_from_environment(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_PORT", "8181")
    monkeypatch.setenv("LABEL_ANYTHING_PORT", "8004")
    args = cli.build_parser().parse_args(["up", "--demo"])
    assert (args.port, args.backend_port) == (8181, 8004)


# -- the credentials file of `up` ------------------------------------------------------------------------
def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_credentials_are_never_readable_by_others(tmp_path, monkeypatch):
    """An older credentials file readable by all, a permissive umask, and the process interrupted right
    after writing (Ctrl+C arriving then; simulated on chmod, the step a write-then-chmod needs next): the
    password is never in a file others can read."""
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    path.chmod(0o644)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "chmod", interrupted)
    monkeypatch.setattr(os, "chmod", interrupted)
    old_umask = os.umask(0)
    try:
        try:
            creds = up.load_credentials(tmp_path, "me@example.com", "pw-1234", None)
        except KeyboardInterrupt:
            creds = None
    finally:
        os.umask(old_umask)
    saved = json.loads(path.read_text())
    assert saved == {} or _private(path), oct(path.stat().st_mode)
    assert creds is not None and saved["password"] == "pw-1234"
    assert not list(tmp_path.glob(".credentials.json.*"))  # no temporary file left


def test_credentials_are_remembered_between_runs(tmp_path):
    first = up.load_credentials(tmp_path / "data", None, None, None)
    path = tmp_path / "data" / "credentials.json"
    assert _private(path)
    again = up.load_credentials(tmp_path / "data", None, None, None)
    assert again == first and first.password and first.token
    changed = up.load_credentials(tmp_path / "data", None, "new password", None)
    assert (changed.username, changed.password, changed.token) == (first.username, "new password", first.token)
    assert _private(path) and json.loads(path.read_text())["password"] == "new password"


def test_serve_disk_cache_size(tmp_path, monkeypatch):
    """``--cache-disk-gb`` (env LABEL_ANYTHING_CACHE_DISK_GB) bounds the backend's disk cache; 0 turns it off."""
    from label_anything.cli.serve import build_backend

    base = ["serve", "--model-name", "classical", "--device", "cpu", "--cache-dir", str(tmp_path)]
    monkeypatch.setenv("LABEL_ANYTHING_CACHE_DISK_GB", "1.5")
    for extra, disk_dir, max_bytes in [
        ([], tmp_path / "embeddings", int(1.5 * 2**30)),
        (["--cache-disk-gb", "0.25"], tmp_path / "embeddings", 2**28),
        (["--cache-disk-gb", "0"], None, 0),
    ]:
        backend = build_backend(cli.build_parser().parse_args(base + extra))
        try:
            assert (backend.cache.disk_dir, backend.cache.max_disk_bytes) == (disk_dir, max_bytes), extra
        finally:
            backend.close()


def test_up_passes_its_model_options_to_the_backend(tmp_path):
    """The backend ``up`` starts gets the model options ``up`` was given, not its own defaults."""
    args = cli.build_parser().parse_args([
        "up", "--demo", "--model-name", "sam", "--sam-config", "vit_b", "--checkpoint", str(tmp_path / "w.pth"),
        "--device", "cpu", "--decoder", "onnx", "--cache-dir", str(tmp_path), "--cache-disk-gb", "12.5",
        "--backend-port", "8123",
    ])
    served = cli.build_parser().parse_args(up._backend_command(args)[3:])  # after "python -m label_anything"
    assert served.command == "serve" and served.port == 8123
    for name in ("model_name", "sam_config", "checkpoint", "device", "decoder", "cache_dir", "cache_disk_gb"):
        assert str(getattr(served, name)) == str(getattr(args, name)), name
