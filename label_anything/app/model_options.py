"""The model a dataset command (``boxes-to-masks``, ``precompute``) runs, as plain values, and the rule that
such a command never falls back to GrabCut unasked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from label_anything.errors import LabelAnythingError


@dataclass(frozen=True)
class ModelOptions:
    """The options of ``cli.options.add_model_arguments`` that say which model to load (names as there).

    ``checkpoint`` and ``cache_dir`` are paths as given (relative to this process's folder, ``~`` allowed);
    ``for_worker`` makes them absolute for another process.
    """

    model_name: str = "auto"
    sam_config: str | None = None
    checkpoint: str | Path | None = None
    device: str = "auto"
    decoder: str = "torch"
    cache_dir: str | Path | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> ModelOptions:
        """The options found in ``values`` (e.g. ``vars(args)``); a missing or empty decoder is ``torch``,
        other missing ones take their defaults."""
        given = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
        return cls(**given)

    def for_worker(self) -> dict[str, Any]:
        """The options as a Ray worker takes them (``app.ray_pool.load_worker_model``): a dict of the field
        names, paths made absolute since a worker's current folder is not the driver's."""
        options: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        options["decoder"] = options["decoder"] or "torch"
        for name in ("checkpoint", "cache_dir"):
            if options[name] is not None:
                options[name] = os.path.abspath(os.path.expanduser(str(options[name])))
        return options

    @property
    def is_auto(self) -> bool:
        return str(self.model_name or "auto").lower() == "auto"

    def refuse_grabcut_fallback(self, command: str) -> None:
        """Refuse ``--model-name auto`` when it would pick the classical engine (no checkpoint in the cache).

        Interactive commands fall back to GrabCut with a warning; a batch command would silently give a whole
        dataset GrabCut masks with heuristic scores, so there ``classical`` must be asked for by name.
        Checked before anything loads: ``auto`` picks from the files in the cache folder alone.
        """
        if not self.is_auto:
            return
        from label_anything.engine.models import choose_model

        # Either device order tries every checkpoint: classical comes out only when none is there.
        choice = choose_model("auto", self.sam_config, self.checkpoint, cache_dir=self.cache_dir, device="cpu")
        if choice.name == "classical":
            raise LabelAnythingError(self._grabcut_refusal(command))

    def refuse_classical_model(self, command: str, model_name: str) -> None:
        """The same refusal after loading (a Ray worker resolves ``auto`` on its own node): ``model_name`` is
        the loaded model's family."""
        if self.is_auto and model_name == "classical":
            raise LabelAnythingError(self._grabcut_refusal(command))

    def _grabcut_refusal(self, command: str) -> str:
        from label_anything.engine.weights import checkpoint_dir

        return (f"--model-name auto found no SAM checkpoint in {checkpoint_dir(self.cache_dir)}, "
                f"and {command} does not fall back to GrabCut for a whole dataset: get one with "
                "`label-anything download mobile_sam` (or pass --model-name and --checkpoint), or pass "
                "--model-name classical to use GrabCut")
