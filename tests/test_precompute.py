"""precompute: encodes what is not cached, nothing on a second run, and resumes after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from label_anything.engine.cache import EmbeddingCache
from label_anything.precompute import folder_images, precompute


@pytest.fixture()
def image_folder(tmp_path, chelsea):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(chelsea).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(chelsea[:, ::-1])).save(folder / "sub" / "b.png")  # another digest
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_second_run_encodes_nothing_via_cli(image_folder, tmp_path, random_checkpoint, capsys):
    from label_anything.cli import main

    argv = ["precompute", "--images", str(image_folder), "--model-name", "mobile_sam",
            "--checkpoint", str(random_checkpoint("mobile_sam", "vit_t")), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["encoded"], first["already_cached"], first["failed"]) == (2, 0, [])
    assert len(list((tmp_path / "cache" / "embeddings").glob("*/*.npz"))) == 2
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["encoded"], second["already_cached"]) == (0, 2)


def test_interrupted_run_resumes(image_folder, tmp_path, mobile_sam_model):
    cache_dir = tmp_path / "embeddings"

    def interrupted():
        for i, item in enumerate(folder_images(image_folder)):
            if i == 1:
                raise KeyboardInterrupt  # Ctrl-C while the second image is next
            yield item

    with pytest.raises(KeyboardInterrupt):
        precompute(mobile_sam_model, interrupted(), EmbeddingCache(disk_dir=cache_dir), progress=False)
    assert len(list(cache_dir.glob("*/*.npz"))) == 1  # the finished image survived
    # a new process: fresh memory, same disk
    report = precompute(mobile_sam_model, folder_images(image_folder), EmbeddingCache(disk_dir=cache_dir),
                        progress=False)
    assert (report.encoded, report.cached, report.failed) == (1, 1, [])
    assert report.images_per_s > 0


def test_unreadable_image_is_reported_not_fatal(tmp_path, mobile_sam_model):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    report = precompute(mobile_sam_model, folder_images(folder), EmbeddingCache(), progress=False)
    assert (report.encoded, report.failed) == (0, ["broken.jpg"])


def test_next_image_loads_while_this_one_is_encoded():
    import threading

    from label_anything.errors import ImageError
    from label_anything.precompute import loaded_ahead

    second_loading = threading.Event()
    threads: list[str] = []

    def loader(i: int):
        def load():
            threads.append(threading.current_thread().name)
            if i == 1:
                second_loading.set()
            if i == 2:
                raise ImageError("broken file")
            return np.full((2, 2, 3), i, np.uint8), f"digest{i}"

        return load

    source = ((f"img{i}", loader(i)) for i in range(3))
    seen = []
    for name, loaded in loaded_ahead(source):
        if name == "img0":
            # the consumer is still busy with the first image, and the second one is already loading
            assert second_loading.wait(10)
        seen.append((name, loaded if isinstance(loaded, ImageError) else loaded[1]))
    assert [n for n, _ in seen] == ["img0", "img1", "img2"]
    assert seen[1][1] == "digest1" and isinstance(seen[2][1], ImageError)
    assert all(t.startswith("precompute-load") for t in threads)
