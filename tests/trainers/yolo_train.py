"""Train YOLO11n-seg (from its yaml: no weights) one epoch on a ``convert --to yolo-seg`` dataset; print a report.

Runs in the trainers' venv: ``python yolo_train.py DATA_YAML WORK_DIR``. Offline, CPU, imgsz 128, plots off.
The last line printed is a JSON report: the labels Ultralytics read for every image of the train and val sets
(classes and segments, as parsed by its own loader), every training batch's losses, and the validation
metrics. The test compares the labels with our label files and checks that the losses are finite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def labels_of(dataset) -> dict[str, dict]:
    return {
        Path(lb["im_file"]).name: {
            "cls": [int(c) for c in lb["cls"].reshape(-1)],
            "segments": [s.reshape(-1).tolist() for s in lb["segments"]],
            "shape": [int(v) for v in lb.get("shape", ())],
        }
        for lb in dataset.labels
    }


def main() -> None:
    data, work = sys.argv[1], Path(sys.argv[2])
    from ultralytics import YOLO

    report: dict = {"batches": []}

    def on_train_start(trainer) -> None:
        report["train_labels"] = labels_of(trainer.train_loader.dataset)
        report["val_labels"] = labels_of(trainer.test_loader.dataset)

    def on_train_batch_end(trainer) -> None:
        report["batches"].append({k: float(v) for k, v in trainer.loss_items.items()})

    model = YOLO("yolo11n-seg.yaml", task="segment")  # architecture only: random initial weights
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    model.train(data=data, epochs=1, imgsz=128, batch=2, device="cpu", workers=0, plots=False, amp=False,
                project=str(work), name="train", exist_ok=True, seed=0, deterministic=True, verbose=False)
    trainer = model.trainer
    report["metrics"] = {k: float(v) for k, v in trainer.metrics.items()}
    report["save_dir"] = str(trainer.save_dir)
    report["weights"] = [p.name for p in sorted((Path(trainer.save_dir) / "weights").glob("*.pt"))]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
