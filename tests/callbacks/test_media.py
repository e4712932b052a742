"""Evaluation media reach every logger: TensorBoard, CSV (files), and W&B / MLflow by their own APIs."""

from __future__ import annotations

import numpy as np

from genlip_lit.callbacks.media import log_result

IMAGE = np.zeros((4, 4, 3), np.uint8)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", dict(metrics), step))


class WandbLogger(_Recorder):  # recognised by class name: wandb itself is an optional extra
    def log_image(self, key, images, step):
        self.calls.append(("image", key, step))

    def log_table(self, key, columns, data, step):
        self.calls.append(("table", key, columns, data, step))


class _MlflowClient:
    def __init__(self, calls) -> None:
        self.calls = calls

    def log_image(self, run_id, image, artifact_file):
        self.calls.append(("image", run_id, artifact_file))

    def log_text(self, run_id, text, artifact_file):
        self.calls.append(("text", run_id, artifact_file))


class MLFlowLogger(_Recorder):
    run_id = "r1"

    @property
    def experiment(self):
        return _MlflowClient(self.calls)


def test_each_logger_gets_what_it_takes(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv_logger = CSVLogger(str(tmp_path), name="csv")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    wandb, mlflow = WandbLogger(), MLFlowLogger()
    table = (["features", "top-1"], [["encoder", 0.5]])
    log_result([csv_logger, tb, wandb, mlflow], 7, {"probe/linear_top1": 0.5}, {"sink/per_layer": IMAGE},
               {"probe/table": "| a |"}, {"probe/table": table})
    csv_logger.save()
    media = tmp_path / "csv" / "version_0" / "media"
    assert sorted(p.name for p in media.iterdir()) == ["probe_table_step7.csv", "probe_table_step7.md",
                                                       "sink_per_layer_step7.png"]
    assert (media / "probe_table_step7.csv").read_text().splitlines() == ["features,top-1", "encoder,0.5"]
    assert "probe/linear_top1" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert wandb.calls == [("metrics", {"probe/linear_top1": 0.5}, 7), ("image", "sink/per_layer", 7),
                           ("table", "probe/table", ["features", "top-1"], [["encoder", "0.5"]], 7)]
    assert mlflow.calls[1:] == [("image", "r1", "media/sink_per_layer_step7.png"),
                                ("text", "r1", "media/probe_table_step7.md")]
    tb.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "tb" / "version_0").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert "sink/per_layer" in acc.Tags()["images"] and any("probe/table" in t for t in acc.Tags()["tensors"])
