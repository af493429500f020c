"""Provision a Label Studio through its REST API: a small client, and the label config of ``up``.

Used by ``label-anything up``, ``import-coco --project`` and the integration tests, so all exercise the same
provisioning code. The REST calls are the ones seen working on Label Studio 1.23.2 (see
docs/label-studio-ml-protocol.md); a call authenticates with a legacy token (``Authorization: Token ...``,
which is why ``up`` starts Label Studio with ``--enable-legacy-api-token``, see ``app.labelstudio_process``)
or a personal access token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from label_anything.errors import LabelAnythingError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BACKEND_TITLE = "label-anything"
LABEL_COLORS = ("#e51515", "#412cdd", "#1ea64a", "#f08c00", "#9c36b5", "#0c8599", "#d6336c", "#5c940d")


class LabelStudioError(LabelAnythingError):
    """Label Studio refused a call, or could not be started (``app.labelstudio_process``)."""


# -- label config ------------------------------------------------------------------------------------
def _xml_attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


CONCEPT_TEXTAREA = (
    '  <Header value="SAM 3: type a label (or LABEL: phrase) and press Enter to find every instance"/>\n'
    '  <TextArea name="concept" toName="image" placeholder="e.g. cat, or cat: tabby cat" rows="1"'
    ' showSubmitButton="true" editable="true" perRegion="false"/>\n'
)
"""The TextArea of ``label_config(..., concept=True)``: a phrase typed there (Auto-Annotation on) is sent to the
backend as a ``textarea`` result, answered by SAM 3 with every instance (see ``labelstudio.concepts``)."""


def label_config(labels: Sequence[str], *, concept: bool = False) -> str:
    """The original tool's config for ``labels``: smart keypoints, rectangles, polygons and brush; with
    ``concept`` (a SAM 3 backend), also ``CONCEPT_TEXTAREA``, to type a concept to find.

    Rectangle labels are smart too, so the Auto-Detect toolbar offers a smart rectangle as well as a
    smart keypoint; the plain rectangle tool stays available.
    """
    if not labels:
        raise LabelAnythingError("give at least one label (--labels cat,person)")

    def block(tag: str, name: str, extra: str) -> str:
        rows = "".join(
            f'\n    <Label value="{_xml_attr(label)}" background="{LABEL_COLORS[i % len(LABEL_COLORS)]}"{extra}/>'
            for i, label in enumerate(labels)
        )
        return f'  <{tag} name="{name}" toName="image">{rows}\n  </{tag}>\n'

    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        + (CONCEPT_TEXTAREA if concept else "")
        + block("KeyPointLabels", "KeyPointLabels", ' smart="true" showInline="true"')
        + block("RectangleLabels", "RectangleLabels", ' smart="true"')
        + block("PolygonLabels", "PolygonLabels", "")
        + block("BrushLabels", "BrushLabels", "")
        + "</View>\n"
    )


def image_regex() -> str:
    """Regex for the local-files storage: the image extensions, any case, any sub-folder."""
    exts = "|".join(re.escape(e[1:]) for e in IMAGE_EXTENSIONS)
    return rf"(?i).*\.({exts})$"


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, as the local-files storage of ``up`` finds them."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# -- REST client -------------------------------------------------------------------------------------
class _ApiKeyAuth(httpx.Auth):
    """``Authorization`` from an API key: a legacy key as ``Token <key>``; a personal access token (a JWT
    refresh token) exchanged for a short-lived access token, sent as ``Bearer`` (``images.LabelStudioAuth``)."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        from label_anything.imaging.fetch import LabelStudioAuth

        self._refresher = httpx.Client(timeout=timeout)
        self._auth = LabelStudioAuth(url, token, self._refresher)

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = self._auth.header()
        yield request

    def close(self) -> None:
        self._refresher.close()


@dataclass
class LabelStudioClient:
    """The few Label Studio REST calls a local project needs, with a legacy token or a personal access token."""

    url: str
    token: str
    timeout: float = 120.0

    def __post_init__(self) -> None:
        self._auth = _ApiKeyAuth(self.url, self.token, self.timeout)
        self.api = httpx.Client(base_url=self.url, auth=self._auth, timeout=self.timeout)

    def close(self) -> None:
        self.api.close()
        self._auth.close()

    def check_access(self) -> dict:
        """The current user; a clear LabelStudioError when Label Studio cannot be reached or refuses the key."""
        try:
            response = self.api.get("/api/current-user/whoami")
        except LabelAnythingError as exc:  # a personal access token Label Studio would not refresh
            raise LabelStudioError(f"Label Studio at {self.url} refused the API key: {exc}") from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({exc})") from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the API key (HTTP {response.status_code}): give your personal "
                "access token (Account & Settings), or a legacy token where legacy tokens are enabled, with "
                "--label-studio-api-key or LABEL_STUDIO_API_KEY"
            )
        if response.status_code != 200:
            raise LabelStudioError(f"Label Studio at {self.url}: GET /api/current-user/whoami → "
                                   f"{response.status_code}: {response.text[:300]}")
        return response.json()

    def find_project(self, ref: str) -> dict:
        """The project ``ref`` names: its id, else its exact title. LabelStudioError when there is none, or
        when several projects share that title."""
        if ref.strip().isdigit():
            found = self.project(int(ref))
            if found is not None:
                return found
        matches = [p for p in self.projects() if p.get("title") == ref]
        if len(matches) == 1:
            return self.project(matches[0]["id"]) or matches[0]
        if len(matches) > 1:
            ids = ", ".join(str(p["id"]) for p in matches)
            raise LabelStudioError(f"{len(matches)} projects are titled {ref!r} (ids {ids}); give the id")
        raise LabelStudioError(f"Label Studio at {self.url} has no project with id or title {ref!r}")

    def import_tasks(self, project_id: int, tasks: list[dict], batch: int = 200) -> dict[str, int]:
        """Create ``tasks`` (Label Studio import JSON, predictions included) in the project, ``batch`` per call.

        Returns the totals Label Studio reports: ``{"task_count", "prediction_count"}``.
        """
        totals = {"task_count": 0, "prediction_count": 0}
        for start in range(0, len(tasks), batch):
            answer = self.call("POST", f"/api/projects/{project_id}/import", json=tasks[start : start + batch])
            for key in totals:
                totals[key] += int((answer or {}).get(key) or 0)
        return totals

    def call(self, method: str, path: str, ok: Sequence[int] = (200, 201, 204), **kwargs: Any) -> Any:
        """One call; a status outside ``ok`` raises ``LabelStudioError`` with Label Studio's message."""
        response = self.api.request(method, path, **kwargs)
        if response.status_code not in ok:
            raise LabelStudioError(f"Label Studio: {method} {path} → {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def whoami(self) -> dict:
        return self.call("GET", "/api/current-user/whoami")

    # projects
    def project(self, project_id: int) -> dict | None:
        response = self.api.get(f"/api/projects/{project_id}")
        return response.json() if response.status_code == 200 else None

    def projects(self) -> list[dict]:
        answer = self.call("GET", "/api/projects", params={"page_size": 10000})
        return answer["results"] if isinstance(answer, dict) else answer

    def create_project(self, title: str, config: str) -> dict:
        return self.call("POST", "/api/projects", json={"title": title, "label_config": config})

    def ensure_project(self, title: str, config: str, project_id: int | None = None) -> tuple[dict, bool]:
        """The project ``project_id`` (else the first titled ``title``) with ``config``, or a new one.

        Returns (project, created). An existing project gets ``config`` when it differs (new labels).
        """
        found = self.project(project_id) if project_id is not None else None
        if found is None:
            found = next((p for p in self.projects() if p.get("title") == title), None)
        if found is None:
            return self.create_project(title, config), True
        if found.get("label_config", "").strip() != config.strip():
            found = self.call("PATCH", f"/api/projects/{found['id']}", json={"label_config": config})
        return found, False

    def import_file(self, project_id: int, path: Path, content_type: str = "image/jpeg") -> Any:
        with open(path, "rb") as f:
            return self.call(
                "POST", f"/api/projects/{project_id}/import", files={"file": (path.name, f, content_type)}
            )

    # local files storage
    def local_storages(self, project_id: int) -> list[dict]:
        return self.call("GET", "/api/storages/localfiles", params={"project": project_id})

    def add_local_storage(
        self, project_id: int, folder: Path, title: str, regex: str | None = None, recursive: bool = True
    ) -> dict:
        """A local-files storage of ``folder`` (which must lie under Label Studio's document root)."""
        return self.call(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project_id,
                "path": str(folder),
                "use_blob_urls": True,  # one task per file, data {"image": "/data/local-files/?d=..."}
                "regex_filter": regex or image_regex(),  # matched against the file name only
                "recursive_scan": recursive,
                "title": title,
            },
        )

    def ensure_local_storage(self, project_id: int, folder: Path, title: str) -> dict:
        """The project's local-files storage for ``folder``, created when missing."""
        for storage in self.local_storages(project_id):
            if Path(storage.get("path", "")) == folder:
                return storage
        return self.add_local_storage(project_id, folder, title)

    def sync_storage(self, storage_id: int, timeout: float = 300.0) -> dict:
        """Sync (import new files as tasks) and wait until Label Studio reports it done."""
        self.call("POST", f"/api/storages/localfiles/{storage_id}/sync")
        deadline = time.monotonic() + timeout
        while True:
            storage = self.call("GET", f"/api/storages/localfiles/{storage_id}")
            status = storage.get("status")
            if status in (None, "completed"):
                return storage
            if status == "failed":
                raise LabelStudioError(f"Label Studio could not sync {storage.get('path')}: {storage.get('traceback')}")
            if time.monotonic() > deadline:
                raise LabelStudioError(f"syncing {storage.get('path')} took more than {timeout:.0f} s")
            time.sleep(0.5)

    def tasks(self, project_id: int) -> list[dict]:
        return self.call("GET", "/api/tasks", params={"project": project_id, "page_size": 100000})["tasks"]

    # ML backends
    def ml_backends(self, project_id: int) -> list[dict]:
        return self.call("GET", "/api/ml", params={"project": project_id})

    def add_backend(self, project_id: int, url: str, title: str = BACKEND_TITLE, **extra: Any) -> dict:
        """Add ``url`` as an interactive backend; Label Studio calls /health and /setup while saving."""
        body = {"url": url, "project": project_id, "is_interactive": True, "title": title, **extra}
        return self.call("POST", "/api/ml", json=body)

    def connect_backend(self, project_id: int, url: str, title: str = BACKEND_TITLE) -> dict:
        """Make ``url`` the project's interactive backend (replacing an earlier ``title`` one, whose port may
        have changed) and check that Label Studio reaches it."""
        for ml in self.ml_backends(project_id):
            if ml.get("title") == title or ml.get("url") == url:
                self.call("DELETE", f"/api/ml/{ml['id']}")
        ml = self.add_backend(project_id, url, title)
        if ml.get("readable_state") != "Connected":
            raise LabelStudioError(
                f"Label Studio cannot reach the backend at {url} (state {ml.get('readable_state')!r}); "
                "see the backend log"
            )
        return ml
