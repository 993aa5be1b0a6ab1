"""Experiment tracking (``--log``, issue 14): every ``metrics.jsonl`` record, the config and the
final metrics reach TensorBoard / MLflow and read back with those libraries' own readers; a
resumed run continues the same tracker run without duplicate steps; ``none`` writes nothing;
a failing tracker warns once and training goes on."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_crash import Crash, crash_at
from helpers_finetune import fake_pretrain_run, write_toy_h5

from deeplense_ssl import tracking, training
from deeplense_ssl.config import FinetuneConfig, PretrainConfig, config_from_sources
from deeplense_ssl.datasets import ImageSet
from deeplense_ssl.errors import ConfigError, MissingDependencyError
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.runs import (
    FINETUNE_FILES,
    FINETUNE_KIND,
    REPLACEABLE_FILES,
    TRACKING_FILE,
    read_json,
    read_metrics,
)
from deeplense_ssl.tracking import (
    EXPERIMENT,
    final_metrics,
    flat_params,
    open_tracker,
    scalar_metrics,
)
from deeplense_ssl.training.resume import RESUMABLE_CHANGES
from deeplense_ssl_cli.main import cli

PRETRAIN_FILES = {"config.json", "checkpoint.pt", "backbone.pt", "metrics.jsonl", "loss_curve.png"}


def _imageset(n: int = 12) -> ImageSet:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % 2
    images = rng.random((n, 1, 16, 16), dtype=np.float32)
    images[labels == 1, :, 4:12, 4:12] += 1.0
    return ImageSet(images=images, labels=labels, class_names=["a", "b"], sources=[""] * n)


def _cfg(out: Path, **kw) -> PretrainConfig:
    base = dict(
        out=str(out),
        stem="small",
        batch_size=4,
        epochs=1,
        proj_hidden_dim=16,
        proj_out_dim=8,
        device="cpu",
        checkpoint_every_steps=2,
        log_every_steps=1,
        warmup_epochs=0.5,
        collapse_monitor_size=8,
        prefetch=0,
    )
    base.update(kw)
    return PretrainConfig(**base)


def _pretrain(out: Path, on_step=None, **kw) -> Path:
    return training.pretrain(_cfg(out, **kw), progress=False, dataset=_imageset(), on_step=on_step)


def _expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] that the trackers should hold for ``records``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in scalar_metrics(record).items():
            out.setdefault(tag, []).append((int(record["step"]), value))
    return out


# --------------------------------------------------------------------------------------------
# readers: the trackers' own libraries
# --------------------------------------------------------------------------------------------


def _tensorboard(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """Scalars (tag -> [(step, value)]) and the config text, read by TensorBoard's reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = acc.Tensors("config/text_summary")
    return scalars, texts[-1].tensor_proto.string_val[0].decode()


def _as_float32(series: dict[str, list[tuple[int, float]]]) -> dict:
    """Event files store float32 scalars."""
    return {t: [(s, float(np.float32(v))) for s, v in vals] for t, vals in series.items()}


@pytest.fixture
def mlflow_env(monkeypatch):
    """No MLFLOW_ALLOW_FILE_STORE in the environment: the tracker opts in for its file store."""
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    yield
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _mlflow(run_dir: Path):
    """(client, run, every run of the experiment) of the run folder's own file store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").absolute().as_uri())
    run = client.get_run(read_json(run_dir / TRACKING_FILE, "tracking")["run_id"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, run, client.search_runs([experiment.experiment_id])


def _mlflow_series(client, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def _without_final(series: dict) -> dict:
    return {k: v for k, v in series.items() if not k.startswith("final/")}


# --------------------------------------------------------------------------------------------
# what is sent
# --------------------------------------------------------------------------------------------


def test_scalar_names_params_and_final_metrics():
    record = {"kind": "epoch", "step": 4, "epoch": 1, "loss": 1.5, "knn_top1": 0.5,
              "collapse_warning": "text", "flag": True, "missing": None}  # fmt: skip
    assert scalar_metrics(record) == {
        "epoch/epoch": 1.0, "epoch/loss": 1.5, "epoch/knn_top1": 0.5, "epoch/flag": 1.0,
    }  # fmt: skip
    assert scalar_metrics({"step": 3, "train_loss": 0.25, "val_auc_macro": None}) == {
        "train_loss": 0.25
    }
    rows = [{"kind": "step", "step": 1, "loss": 2.0}, {"kind": "step", "step": 2, "loss": 1.0}]
    assert final_metrics(rows) == {"final/step/loss": 1.0}
    assert flat_params({"config": {"lr": 0.1, "sizes": [1, 2], "uri": None}, "k": "v"}) == {
        "config.lr": 0.1, "config.sizes": "[1, 2]", "config.uri": "null", "k": "v",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------


def test_pretrain_tensorboard_holds_every_metrics_record_and_the_config(tmp_path):
    run = _pretrain(tmp_path / "run", log="tensorboard", knn_monitor=True, knn_val_fraction=0.25)
    records = read_metrics(run)
    assert {"knn_top1", "rankme", "emb_std_mean"} <= set(records[-1])  # the monitors ran
    scalars, config_text = _tensorboard(run / "tensorboard")
    assert _without_final(scalars) == _as_float32(_expected(records))
    last_epoch = [r for r in records if r["kind"] == "epoch"][-1]
    assert scalars["final/epoch/knn_top1"] == [(2, np.float32(last_epoch["knn_top1"]))]
    assert "| config.batch_size | 4 |" in config_text
    assert "| resolved.global_batch_size | 4 |" in config_text
    assert read_json(run / TRACKING_FILE, "tracking") == {"log": "tensorboard", "log_uri": None}


def test_pretrain_mlflow_holds_the_params_and_the_metric_history(tmp_path, mlflow_env):
    run = _pretrain(tmp_path / "run", log="mlflow")
    records = read_metrics(run)
    client, mlrun, all_runs = _mlflow(run)
    assert len(all_runs) == 1 and mlrun.info.run_name == "run"
    assert mlrun.info.status == "FINISHED"
    assert _without_final(_mlflow_series(client, mlrun)) == _expected(records)  # float64 exact
    params = mlrun.data.params
    assert params["config.batch_size"] == "4" and params["config.log"] == "mlflow"
    assert params["config.method"] == "contrastive-blur"
    assert params["resolved.steps_per_epoch"] == "3"
    assert mlrun.data.metrics["final/epoch/loss"] == records[-1]["loss"]


def test_none_writes_nothing_extra(tmp_path):
    run = _pretrain(tmp_path / "run")  # log="none" is the default
    assert set(os.listdir(run)) == PRETRAIN_FILES


def test_a_tensorboard_log_uri_is_the_event_folder(tmp_path):
    run = _pretrain(tmp_path / "run", log="tensorboard", log_uri=str(tmp_path / "tb" / "a"))
    assert set(os.listdir(run)) == PRETRAIN_FILES | {TRACKING_FILE}
    scalars, _ = _tensorboard(tmp_path / "tb" / "a")
    assert _without_final(scalars) == _as_float32(_expected(read_metrics(run)))


def test_cli_flags_send_two_runs_to_one_mlflow_store(tmp_path, mlflow_env):
    data = tmp_path / "d.npy"
    np.save(data, _imageset().images)
    store = (tmp_path / "store").absolute().as_uri()
    for name in ("a", "b"):
        args = ["pretrain", "--data", str(data), "--out", str(tmp_path / name), "--stem", "small"]
        args += ["--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]
        args += ["--proj-hidden-dim", "16", "--proj-out-dim", "8", "--collapse-monitor-size", "8"]
        args += ["--log", "mlflow", "--log-uri", store]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert set(os.listdir(tmp_path / name)) == PRETRAIN_FILES | {TRACKING_FILE}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    for r in runs:
        tracked = read_json(tmp_path / r.info.run_name / TRACKING_FILE, "tracking")
        assert tracked == {"log": "mlflow", "log_uri": store, "run_id": r.info.run_id}
        assert _without_final(_mlflow_series(client, r)) == _expected(
            read_metrics(tmp_path / r.info.run_name)
        )


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log", ["tensorboard", "mlflow"])
def test_a_resumed_run_continues_the_same_tracker_run_without_duplicate_steps(
    tmp_path, log, mlflow_env
):
    # 3 steps an epoch; checkpoints at 2, 3, 4; step 5 is logged, then the run dies
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _pretrain(out, on_step=crash_at(5), epochs=2, log=log)
    first, killed = read_json(out / TRACKING_FILE, "tracking"), read_metrics(out)
    # event files are read in name order, whose first field is the time in whole seconds
    time.sleep(1.05)
    _pretrain(out, epochs=3, log=log, resume=True)  # and one more epoch
    records = read_metrics(out)
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 10))
    if log == "tensorboard":
        scalars, config_text = _tensorboard(out / "tensorboard")
        assert _without_final(scalars) == _as_float32(_expected(records))
        assert "| config.epochs | 3 |" in config_text  # the resumed session's config
        return
    assert read_json(out / TRACKING_FILE, "tracking")["run_id"] == first["run_id"]
    client, mlrun, all_runs = _mlflow(out)
    assert len(all_runs) == 1 and mlrun.info.status == "FINISHED"
    # MLflow cannot delete values: steps it holds keep the killed session's (step 5 here, with
    # the 2-epoch schedule's lr), later ones are the resumed session's; each step once
    expected = _expected(killed)
    for tag, values in _expected(records).items():
        done = max((s for s, _ in expected.get(tag, [])), default=0)
        expected.setdefault(tag, []).extend((s, v) for s, v in values if s > done)
    assert _without_final(_mlflow_series(client, mlrun)) == expected
    assert mlrun.data.params["config.epochs"] == "2"  # MLflow parameters cannot change
    assert mlrun.data.tags["resume.config.epochs"] == "3"


@pytest.mark.skipif(
    "log" not in RESUMABLE_CHANGES,
    reason="needs 'log' and 'log_uri' in training.resume.RESUMABLE_CHANGES (requested)",
)
def test_tracking_can_be_switched_on_when_resuming(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _pretrain(out, on_step=crash_at(3), epochs=2)
    _pretrain(out, epochs=2, log="tensorboard", resume=True)
    scalars, _ = _tensorboard(out / "tensorboard")
    assert [s for s, _ in scalars["step/loss"]] == [4, 5, 6]  # from the checkpoint at 3 on


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------


def _finetune(root: Path, log: str) -> Path:
    if not (root / "train.h5").exists():
        write_toy_h5(root / "train.h5", n_per_class=10)
        fake_pretrain_run(root / "pretrain")
    cfg = FinetuneConfig(
        data=str(root / "train.h5"), checkpoint=str(root / "pretrain"), out=str(root / "ft"),
        epochs=2, min_steps=0, batch_size=16, val_fraction=0.5, min_val_per_class=2,
        device="cpu", log=log,
    )  # fmt: skip
    return finetune(cfg, progress=False)


@pytest.mark.parametrize("log", ["none", "tensorboard", "mlflow"])
def test_finetune_sends_its_epochs_config_and_kept_epoch(tmp_path, log, mlflow_env):
    out = _finetune(tmp_path, log)
    records, kept = read_metrics(out), read_json(out / "val_metrics.json", "val metrics")
    assert len(records) == 2 and "val_auc_macro" in records[0]
    if log == "none":
        assert sorted(os.listdir(out)) == sorted(FINETUNE_FILES)
        return
    if log == "tensorboard":
        scalars, config_text = _tensorboard(out / "tensorboard")
        assert _without_final(scalars) == _as_float32(_expected(records))
        last = records[-1]["step"]
        assert scalars["final/val_auc_macro"] == [(last, np.float32(kept["val_auc_macro"]))]
        assert "| config.head | linear |" in config_text
        return
    client, mlrun, all_runs = _mlflow(out)
    assert len(all_runs) == 1 and mlrun.info.run_name == "ft"
    assert _without_final(_mlflow_series(client, mlrun)) == _expected(records)
    assert mlrun.data.metrics["final/val_auc_macro"] == kept["val_auc_macro"]
    assert mlrun.data.params["config.head"] == "linear"
    assert mlrun.data.params["pretrain.config.method"] == "simclr"


def test_a_finetune_run_with_tracker_files_is_replaced_whole(tmp_path):
    assert TRACKING_FILE in REPLACEABLE_FILES[FINETUNE_KIND]
    _finetune(tmp_path, "tensorboard")
    time.sleep(1.05)  # event files are read in name order (whole seconds first)
    out = _finetune(tmp_path, "tensorboard")  # the folder holds tensorboard/, tracking.json
    scalars, _ = _tensorboard(out / "tensorboard")
    assert _without_final(scalars) == _as_float32(_expected(read_metrics(out)))  # one run


# --------------------------------------------------------------------------------------------
# bad input and failures
# --------------------------------------------------------------------------------------------


def test_an_unknown_tracker_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"log='wandb' is not one of none, tensorboard, mlflow"):
        _cfg(tmp_path / "run", data="x.h5", log="wandb").validate()
    with pytest.raises(ConfigError, match=r"log='wandb' is not one of"):
        config_from_sources(
            FinetuneConfig, None, {"data": "x.h5", "init": "scratch", "log": "wandb"}
        )
    with pytest.raises(ConfigError, match=r"log='wandb'"):
        open_tracker("wandb", tmp_path)
    result = CliRunner().invoke(cli, ["pretrain", "--data", "x.h5", "--log", "wandb"])
    assert result.exit_code == 2 and "'wandb' is not one of" in result.output
    assert not (tmp_path / "run").exists()


def test_an_unusable_log_uri(tmp_path, mlflow_env):
    """Pretraining: one clear error before the first step; finetune (which opens its tracker
    when writing the trained run): a warning, and the run is written."""
    with pytest.raises(ConfigError, match=r"cannot open mlflow tracking at nowhere://x"):
        _pretrain(tmp_path / "run", log="mlflow", log_uri="nowhere://x")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    write_toy_h5(tmp_path / "train.h5", n_per_class=10)
    fake_pretrain_run(tmp_path / "pretrain")
    cfg = FinetuneConfig(
        data=str(tmp_path / "train.h5"), checkpoint=str(tmp_path / "pretrain"),
        out=str(tmp_path / "ft"), epochs=1, min_steps=0, device="cpu", log="mlflow",
        log_uri="nowhere://x",
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"The run is written without tracking"):
        finetune(cfg, progress=False)
    assert sorted(os.listdir(tmp_path / "ft")) == sorted(FINETUNE_FILES)


@pytest.mark.parametrize("log", ["tensorboard", "mlflow"])
def test_a_missing_extra_names_the_install_command_before_any_work(tmp_path, monkeypatch, log):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == log else real(name)
    )
    with pytest.raises(MissingDependencyError, match=r'pip install "deeplense-ssl\[track\]"'):
        _pretrain(tmp_path / "run", log=log)
    assert not (tmp_path / "run").exists()


def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")

    def broken(self, step, metrics):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoardTracker, "log_metrics", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _pretrain(tmp_path / "run", log="tensorboard", epochs=2)
    ours = [w for w in caught if "tensorboard tracking failed" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "No space left on device" in str(ours[0].message)
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "step"] == list(range(1, 7))
    assert (run / "backbone.pt").exists()
