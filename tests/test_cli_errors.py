"""Every mistake a user can make on the command line is one line on stderr and exit 2, never a traceback.

The environment sweep walks the real parser: every option whose help names an ``[env NAME`` variable and
that has a type or choices is given a garbage value through that variable, and must fail as a usage error
naming the variable, for the command that reads it and no other.
"""

from __future__ import annotations

import argparse
import re

import pytest

from label_anything import cli
from label_anything.cli.options import SECRET_WORDS, EnvValue, env, parse_bool

GARBAGE = "x%y"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _minimal_argv(name: str, sub: argparse.ArgumentParser) -> list[str]:
    """The command with a dummy value for each required argument, so that parsing reaches the defaults."""
    argv = [name]
    for action in sub._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], "1"]
        elif (action.required or (not action.option_strings and action.nargs in (None, "+"))) and not isinstance(
            action, argparse._SubParsersAction
        ):
            argv.append("1")
    for group in sub._mutually_exclusive_groups:
        if group.required:
            argv += [group._group_actions[0].option_strings[0], "1"]
    return argv


def _typed_env_options() -> list[tuple[str, str, str]]:
    """(command, variable, option) for every option read from the environment that checks its value."""
    found = []
    for name, sub in _subparsers(cli.build_parser()).items():
        for action in sub._actions:
            match = re.search(r"\[env ([A-Z0-9_]+)", action.help or "")
            if not match:
                continue
            if match.group(1) == "LABEL_ANYTHING_CONCEPTS":  # any word is a label name; see test_concepts_backend
                continue
            checks = action.type not in (None, str) and getattr(action.type, "__name__", "") != "Path"
            if checks or action.choices or isinstance(action, argparse.BooleanOptionalAction):
                found.append((name, match.group(1), action.option_strings[0]))
    return found


TYPED = _typed_env_options()


def test_the_sweep_sees_the_options_it_is_about():
    variables = {v for _, v, _ in TYPED}
    assert {"LABEL_ANYTHING_MODEL", "LABEL_ANYTHING_DECODER", "LABEL_ANYTHING_CACHE_DISK_GB",
            "LABEL_ANYTHING_PORT", "LABEL_ANYTHING_OUT_BBOX"} <= variables
    assert {c for c, _, _ in TYPED} >= {"segment", "serve", "up", "precompute", "boxes-to-masks"}


@pytest.mark.parametrize(("command", "variable", "option"), TYPED, ids=[f"{c}-{v}" for c, v, _ in TYPED])
def test_a_bad_environment_value_is_one_line_naming_the_variable(command, variable, option, monkeypatch, capsys):
    monkeypatch.setenv(variable, GARBAGE)
    sub = _subparsers(cli.build_parser())[command]
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(_minimal_argv(command, sub))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    if any(word in variable for word in SECRET_WORDS):  # a credential is named, never echoed
        assert f"{variable}='…'" in err and GARBAGE not in err
    else:
        assert f"{variable}={GARBAGE!r}" in err


def test_the_flag_wins_over_a_bad_variable(monkeypatch):
    monkeypatch.setenv("LABEL_ANYTHING_DECODER", GARBAGE)
    args = cli.build_parser().parse_args(["segment", "x.jpg", "--point", "1,1", "--decoder", "onnx"])
    assert args.decoder == "onnx"


def test_a_bad_variable_of_another_command_is_not_read(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LABEL_ANYTHING_PORT", "80O3")
    assert cli.main(["models", "--cache-dir", str(tmp_path)]) == 0
    assert "checkpoints in" in capsys.readouterr().out


def test_log_level_and_decoder_from_the_environment_are_case_insensitive(monkeypatch):
    monkeypatch.setenv("LABEL_ANYTHING_LOG_LEVEL", "info")
    monkeypatch.setenv("LABEL_ANYTHING_DECODER", "ONNX")
    args = cli.build_parser().parse_args(["segment", "x.jpg"])
    assert (args.log_level, args.decoder) == ("INFO", "onnx")


def test_env_values_are_typed_like_flags(monkeypatch):
    monkeypatch.setenv("LABEL_ANYTHING_CACHE_DISK_GB", "0.5")
    assert cli.build_parser().parse_args(["segment", "x.jpg"]).cache_disk_gb == 0.5
    monkeypatch.setenv("X_BLANK", "  ")
    assert env("X_BLANK", "d") == "d" and not isinstance(env("X_BLANK", "d"), EnvValue)
    assert [parse_bool(w) for w in ("On", "no", "1", "FALSE")] == [True, False, True, False]


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", "photo.jpg", "--point", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "X,Y" in err


def test_sam_config_without_model_name_is_refused(tmp_path, capsys):
    image = tmp_path / "a.png"
    _write_png(image)
    code = cli.main(["segment", str(image), "--point", "2,2", "--sam-config", "vit_h", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--sam-config vit_h needs --model-name" in err


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    image = tmp_path / "a.png"
    _write_png(image)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = cli.main(["segment", str(image), "--point", "2,2", "--model-name", "classical",
                     "--out", str(blocker / "mask.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(blocker) in err


def _boom(args):
    raise RuntimeError("something inside broke")


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_an_internal_error_is_one_line_unless_debug(level, monkeypatch, tmp_path, capsys):
    parser = cli.build_parser()
    monkeypatch.setattr(cli.parser, "build_parser", lambda: parser)
    _subparsers(parser)["models"].set_defaults(func=_boom)
    code = cli.main(["--log-level", level, "models"])
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error: RuntimeError: something inside broke" in err
    if level == "DEBUG":
        assert "Traceback (most recent call last)" in err
    else:
        assert "Traceback" not in err and err.count("\n") == 1


def _write_png(path):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[2:6, 2:6] = 200
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(("prompt", "says"), [(["--point", "100,5"], "--point 100,5 is outside the 8x8 image"),
                                              (["--box", "9,0,12,4"], "--box 9,0,12,4 does not overlap")])
def test_a_prompt_off_the_image_is_refused(prompt, says, tmp_path, capsys):
    image = tmp_path / "a.png"
    _write_png(image)
    code = cli.main(["segment", str(image), *prompt, "--model-name", "classical", "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1
    assert not (tmp_path / "m.png").exists()
