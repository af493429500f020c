"""The trainers' venv (``build/trainers-venv``: Ultralytics, MMDetection 3.3, mmcv 2.1 with its ops), built once.

The first build takes about 25 minutes on 2 cores (mmcv compiles its CPU ops; the wheel is kept and reused),
later runs find it done. If it cannot be built (no package index, a failed compile) the tests fail with the
reason; ``LABEL_ANYTHING_SKIP_TRAINERS=1`` skips them instead, for a quick local run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SKIP_ENV = "LABEL_ANYTHING_SKIP_TRAINERS"


@pytest.fixture(scope="session")
def trainers_python(pytestconfig: pytest.Config) -> Path:
    """The trainers' venv python, the venv built (or found complete) first."""
    if os.environ.get(SKIP_ENV, "").strip() in {"1", "true", "yes"}:
        pytest.skip(f"{SKIP_ENV} is set: the Ultralytics / MMDetection training tests are skipped")
    import build_venv  # beside this file (pytest puts a conftest's folder on sys.path)

    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # The build prints one line per step (and a heartbeat during mmcv's 20-minute compile): show them live.
    with capture.global_and_fixture_disabled():
        print(flush=True)
        try:
            python = build_venv.build(build_venv.DEFAULT_VENV)
        except Exception as exc:
            pytest.fail(f"could not build the trainers' venv ({type(exc).__name__}): {exc}\n"
                        f"(set {SKIP_ENV}=1 to skip these tests locally)", pytrace=False)
    return python


@pytest.fixture(scope="session")
def photo_export(tmp_path_factory: pytest.TempPathFactory):
    """The four-photo Label Studio export (brush and polygon regions) of ``photo_export.py``."""
    pytest.importorskip("skimage.data")
    from photo_export import build_photo_export

    return build_photo_export(tmp_path_factory.mktemp("photo-export"))
