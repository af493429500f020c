"""precompute: encodes what is not cached, nothing on a second run, and resumes after an interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from label_anything.app.precompute import folder_images, precompute
from label_anything.engine.cache import EmbeddingCache


@pytest.fixture()
def image_folder(tmp_path, chelsea):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(chelsea).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(chelsea[:, ::-1])).save(folder / "sub" / "b.png")  # another digest
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_second_run_encodes_nothing_via_cli(image_folder, tmp_path, random_checkpoint, capsys):
    from label_anything.cli.parser import main

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

    from label_anything.app.precompute import loaded_ahead
    from label_anything.errors import ImageError

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


# -- Label Studio projects ---------------------------------------------------------------------------
class FakeLabelStudio:
    """Label Studio's task list API as ``precompute --project`` calls it, on a loopback port:
    ``GET /api/tasks?project=ID&page=N&page_size=M`` answers ``{"tasks": [...], "total": ...}`` for a page in
    range and 404 ``{"detail": "Invalid page."}`` past the last one (Django REST framework's paginator), 401
    without the ``Token`` header; ``/data/upload/...`` serves image bytes to the same token."""

    def __init__(self, tasks: list, token: str, files: dict[str, bytes]) -> None:
        import http.server
        import threading
        from urllib.parse import parse_qs, urlsplit

        fake = self
        self.tasks, self.token, self.files = tasks, token, files
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                parts = urlsplit(self.path)
                if self.headers.get("Authorization") != f"Token {fake.token}":
                    return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                if parts.path == "/api/tasks":
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    page, size = int(query["page"]), int(query["page_size"])
                    chosen = [t for t in fake.tasks if not isinstance(t, dict) or t.get("project") ==
                              int(query["project"])]
                    if page > 1 and (page - 1) * size >= len(chosen):
                        return self._send(404, b'{"detail": "Invalid page."}')
                    body = {"tasks": chosen[(page - 1) * size:page * size], "total": len(chosen),
                            "total_annotations": 0, "total_predictions": 0}
                    return self._send(200, json.dumps(body).encode())
                if parts.path in fake.files:
                    return self._send(200, fake.files[parts.path], "image/png")
                return self._send(404, b'{"detail": "Not found."}')

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _png(value: int, size: tuple[int, int] = (30, 40)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def label_studio():
    servers: list[FakeLabelStudio] = []

    def make(tasks: list, files: dict[str, bytes] | None = None) -> FakeLabelStudio:
        servers.append(FakeLabelStudio(tasks, "secret", files or {}))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_project_images_walks_every_page_and_yields_only_image_references(label_studio):
    from label_anything.app.precompute import project_images
    from label_anything.imaging.fetch import ImageFetcher

    tasks = [{"id": i, "project": 7, "data": {"image": f"/data/upload/7/{i}.png", "caption": "a cat", "n": 3}}
             for i in range(1, 6)]
    tasks.insert(2, {"id": 99, "project": 8, "data": {"image": "/data/upload/8/x.png"}})  # another project
    tasks.append({"id": 6, "project": 7, "data": None})  # a task without data
    files = {f"/data/upload/7/{i}.png": _png(10 * i) for i in range(1, 6)}
    ls = label_studio(tasks, files)
    fetcher = ImageFetcher(ls.url, "secret")
    try:
        items = list(project_images(7, fetcher, page_size=2))
        assert [name for name, _ in items] == [f"task {i}: /data/upload/7/{i}.png" for i in range(1, 6)]
        pixels, digest = items[3][1]()
        assert pixels.shape == (30, 40, 3) and int(pixels[0, 0, 0]) == 40 and len(digest) == 64
    finally:
        fetcher.close()
    pages = [r for r in ls.requests if r.startswith("/api/tasks")]
    # 6 tasks of project 7, 2 a page: pages 1-3 are full, so page 4 is asked for and answers 404
    assert pages == [f"/api/tasks?project=7&page={n}&page_size=2" for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("problem", ["refused", "unreachable", "not json", "not a task list"])
def test_project_images_failures_are_one_line_errors(problem, label_studio, http_stub):
    from label_anything.app.precompute import project_images
    from label_anything.errors import LabelAnythingError
    from label_anything.imaging.fetch import ImageFetcher

    ls = label_studio([{"id": 1, "project": 1, "data": {"image": "/data/upload/1/a.png"}}])
    url, key = ls.url, "secret"
    if problem == "refused":
        key = "wrong"
    elif problem == "unreachable":
        ls.close()
    else:  # something else answers at that URL: a login page of a proxy, another service's JSON
        stub = http_stub()
        body = b"<html>sign in</html>" if problem == "not json" else b'{"tasks": 3}'
        stub.routes["/api/tasks"] = (200, {"Content-Type": "text/html"}, body)
        url = stub.url
    fetcher = ImageFetcher(url, key)
    try:
        with pytest.raises(LabelAnythingError) as err:
            list(project_images(1, fetcher))
    finally:
        fetcher.close()
    message = str(err.value)
    assert "\n" not in message and url in message
    assert {"refused": "HTTP 401", "unreachable": "cannot reach Label Studio", "not json": "not a task list",
            "not a task list": "not a task list"}[problem] in message


def test_precompute_project_reads_images_serve_may_read(label_studio, http_stub, tmp_path, capsys, monkeypatch):
    """``--allow-image-host`` and ``--max-image-pixels`` mean what they mean for ``serve``."""
    from label_anything.cli.parser import main

    monkeypatch.delenv("LABEL_ANYTHING_ALLOW_IMAGE_HOSTS", raising=False)
    cdn = http_stub()
    cdn.routes["/img/b.png"] = (200, {"Content-Type": "image/png"}, _png(77, (20, 20)))
    tasks = [{"id": 1, "project": 3, "data": {"image": "/data/upload/3/a.png"}},
             {"id": 2, "project": 3, "data": {"image": f"{cdn.url}/img/b.png"}}]
    ls = label_studio(tasks, {"/data/upload/3/a.png": _png(5)})
    base = ["precompute", "--project", "3", "--label-studio-url", ls.url, "--label-studio-api-key", "secret",
            "--model-name", "classical", "--no-progress"]

    def run(*extra: str) -> dict:
        assert main([*base, "--cache-dir", str(tmp_path / f"cache{len(extra)}"), *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    first = run()
    assert first["encoded"] == 1 and first["failed"] == [f"task 2: {cdn.url}/img/b.png"]  # host not allowed
    assert run("--allow-image-host", f"127.0.0.1:{cdn.port}")["encoded"] == 2
    monkeypatch.setenv("LABEL_ANYTHING_ALLOW_IMAGE_HOSTS", f"127.0.0.1:{cdn.port}")
    assert run("--max-image-pixels", "500")["failed"] == ["task 1: /data/upload/3/a.png"]  # 1200 pixels; 400 pass
    monkeypatch.setenv("LABEL_ANYTHING_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(SystemExit) as usage:
        main([*base, "--cache-dir", str(tmp_path / "c")])
    assert usage.value.code == 2 and "LABEL_ANYTHING_MAX_IMAGE_PIXELS='lots'" in capsys.readouterr().err


# -- the disk cache's size ---------------------------------------------------------------------------
def test_a_project_larger_than_the_disk_cache_is_announced(tmp_path, caplog):
    from label_anything.engine import load_model

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 60, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")
    model = load_model("classical")
    # an embedding of the classical engine is the 40x60 image itself: 7,200 bytes; 4 need 28,800
    roomy = EmbeddingCache(disk_dir=tmp_path / "big", max_disk_bytes=10**6)
    assert precompute(model, folder_images(folder), roomy, progress=False, total=4).disk_cache_short is False
    assert "disk cache" not in caplog.text
    tight = EmbeddingCache(disk_dir=tmp_path / "small", max_disk_bytes=20_000)
    report = precompute(model, folder_images(folder), tight, progress=False, total=4)
    assert report.disk_cache_short is True and report.encoded == 4
    warnings = [r for r in caplog.records if "disk cache" in r.getMessage()]
    assert len(warnings) == 1 and "--cache-disk-gb" in warnings[0].getMessage()
    # Without a total (a Label Studio project is paged), it is said as soon as the images seen overflow it.
    caplog.clear()
    unknown = EmbeddingCache(disk_dir=tmp_path / "unknown", max_disk_bytes=20_000)
    assert precompute(model, folder_images(folder), unknown, progress=False).disk_cache_short is True
    assert len([r for r in caplog.records if "disk cache" in r.getMessage()]) == 1


def test_cli_sizes_the_disk_cache_from_the_option(tmp_path, capsys):
    from label_anything.cli.parser import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((400, 600, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")
    assert main(["precompute", "--images", str(folder), "--model-name", "classical", "--cache-dir",
                 str(tmp_path / "c"), "--cache-disk-gb", "0.001", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 3 images of 400x600x3 = 720,000 bytes each: 2.1 MB, twice the 1.07 MB cap
    assert summary["disk_cache_short"] is True and summary["disk_cache_gb"] == 0.001
    assert main(["precompute", "--images", str(folder), "--model-name", "classical", "--cache-dir",
                 str(tmp_path / "c2"), "--cache-disk-gb", "0.01", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["disk_cache_short"] is False


def test_folder_images_obey_max_image_pixels(image_folder, tmp_path, capsys):
    """The limit holds for a folder too: chelsea is 451x300 = 135,300 pixels."""
    from label_anything.cli.parser import main

    argv = ["precompute", "--images", str(image_folder), "--model-name", "classical", "--cache-dir",
            str(tmp_path / "cache"), "--no-progress"]
    assert main([*argv, "--max-image-pixels", "100000"]) == 1  # nothing could be encoded
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["encoded"], sorted(summary["failed"])) == (0, ["a.png", "sub/b.png"])
    assert main([*argv, "--max-image-pixels", "135300"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoded"] == 2
