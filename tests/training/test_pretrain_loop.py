"""The pretraining loop: run folder, methods, resume (bitwise), divergence, schedule, LARS."""

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_crash import Crash, crash_at, kill_and_resume
from torch import nn

from deeplense_ssl import training
from deeplense_ssl.checkpoint import load_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.datasets import ImageSet
from deeplense_ssl.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from deeplense_ssl.io import write_hdf5
from deeplense_ssl.methods import METHOD_NAMES
from deeplense_ssl.methods.base import chunked
from deeplense_ssl.runs import CHECKPOINT_FILE, read_metrics
from deeplense_ssl.training import loop as train_loop
from deeplense_ssl.training.data import epoch_permutation


def _images(n: int = 12, chans: int = 1, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, chans, size, size), dtype=np.float32)


def _imageset(n: int = 12) -> ImageSet:
    labels = np.arange(n, dtype=np.int64) % 2
    images = _images(n)
    images[labels == 1, :, 4:12, 4:12] += 1.0  # a visible difference between the classes
    return ImageSet(images=images, labels=labels, class_names=["a", "b"], sources=[""] * n)


def _cfg(out, **kw) -> PretrainConfig:
    base = dict(
        out=str(out),
        stem="small",
        batch_size=4,
        epochs=2,
        proj_hidden_dim=16,
        proj_out_dim=8,
        device="cpu",
        checkpoint_every_steps=2,
        log_every_steps=1,
        warmup_epochs=0.5,
    )
    base.update(kw)
    return PretrainConfig(**base)


def _part(state: dict, prefix: str) -> dict:
    """The ``prefix.`` entries of a checkpoint's method state, without the prefix."""
    return {k[len(prefix) + 1 :]: v for k, v in state["method"].items() if k.startswith(prefix)}


def _weights(run_dir) -> dict:
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
    return {"backbone": _part(state, "backbone"), "head": _part(state, "head"),
            "method": state["method"], "opt": state["optimizer"]}  # fmt: skip


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    for part in ("backbone", "head", "method"):  # the method state: targets, centres too
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for idx, buf in a["opt"]["state"].items():
        assert torch.equal(buf["momentum_buffer"], b["opt"]["state"][idx]["momentum_buffer"])


def test_fresh_run_writes_the_run_folder(tmp_path):
    data = tmp_path / "d.h5"
    ds = _imageset()
    write_hdf5(data, ds.images, ds.labels, ds.class_names)
    run = training.pretrain(
        _cfg(tmp_path / "run", data=str(data), knn_monitor=True, knn_val_fraction=0.34),
        progress=False,
    )
    names = {p.name for p in run.iterdir()}
    expected = {"config.json", "checkpoint.pt", "backbone.pt", "metrics.jsonl", "loss_curve.png"}
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]
    meta = json.loads((run / "config.json").read_text())
    assert meta["kind"] == "pretrain" and meta["deeplense_ssl_version"]
    assert meta["config"]["data"] == str(data)
    resolved = meta["resolved"]
    # 12 images, 4 held out for kNN -> 8 train -> 2 steps/epoch, 2 epochs
    assert resolved["n_train"] == 8 and resolved["n_val"] == 4
    assert resolved["steps_per_epoch"] == 2 and resolved["final_step"] == 4
    assert resolved["lr"] == pytest.approx(0.3 * 4 / 256)
    records = read_metrics(run)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(0.0 <= r["knn_top1"] <= 1.0 for r in epochs)
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(run / CHECKPOINT_FILE)["finished"] is True


@pytest.mark.parametrize(
    "method, extra",
    [
        ("simclr", {"n_views": 3, "optimizer": "lars"}),
        ("contrastive-rotation", {"optimizer": "adamw", "lr": 1e-3, "grad_clip": 1.0}),
        ("contrastive-blur", {"amp": "bf16"}),
        ("rotation", {"optimizer": "lars", "channels_last": False}),
    ],
)
def test_every_method_trains_and_resumes(tmp_path, method, extra):
    cfg = _cfg(tmp_path / method, method=method, max_steps=1, **extra)
    run = training.pretrain(cfg, progress=False, dataset=_images(8))
    state = load_checkpoint(run / CHECKPOINT_FILE)  # weights_only, whatever the optimiser
    assert state["step"] == 1
    built = training.build_method_for(cfg, 1, 16, False)
    assert state["method"].keys() == built.state_dict().keys()
    assert math.isfinite(read_metrics(run)[0]["loss"])
    before = _part(state, "backbone")["conv1.weight"]
    resumed = _cfg(tmp_path / method, method=method, max_steps=2, resume=True, **extra)
    training.pretrain(resumed, progress=False, dataset=_images(8))
    after = load_checkpoint(run / CHECKPOINT_FILE)
    assert after["step"] == 2
    assert not torch.equal(_part(after, "backbone")["conv1.weight"], before)


def test_chunked_forward_equals_one_pass_without_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 14 * 14, 5))
    x = torch.randn(12, 1, 16, 16)
    torch.testing.assert_close(chunked(net, x, 3), net(x))
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(256)).train()
    y = torch.cat([torch.zeros(4, 1, 16, 16), torch.ones(4, 1, 16, 16)])
    # with BatchNorm the statistics are per chunk (per view): each chunk is normalised alone
    assert torch.allclose(chunked(bn, y, 2), torch.zeros(8, 256))
    assert not torch.allclose(bn(y), torch.zeros(8, 256))


def test_blur_pretext_head_has_one_logit_per_level(tmp_path):
    cfg = _cfg(tmp_path / "b", method="blur", blur_sigmas_px=[0.0, 1.5, 3.0], max_steps=1)
    run = training.pretrain(cfg, progress=False, dataset=_images(8))
    assert _part(load_checkpoint(run / CHECKPOINT_FILE), "head")["fc.weight"].shape == (3, 512)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_resume_after_a_crash_is_bitwise_identical(tmp_path, method):
    """8 train images, batch 2: 4 steps/epoch. Checkpoints at 3, 4, 6; crash at 7; resume."""
    ds = _imageset()
    kw = dict(epochs=2, batch_size=2, checkpoint_every_steps=3, knn_monitor=True, method=method)
    kw["knn_val_fraction"] = 0.34  # 4 of 12 images held out for the kNN monitor
    ref = training.pretrain(_cfg(tmp_path / "ref", **kw), progress=False, dataset=ds)

    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        training.pretrain(_cfg(crashed, **kw), progress=False, dataset=ds, on_step=crash_at(7))
    assert load_checkpoint(crashed / CHECKPOINT_FILE)["step"] == 6  # step 7 is lost
    assert not (crashed / "backbone.pt").exists()
    torch.manual_seed(12345)  # whatever the process did meanwhile must not matter
    with pytest.raises(CheckpointError, match="--resume"):
        training.pretrain(_cfg(crashed, **kw), progress=False, dataset=ds)
    training.pretrain(_cfg(crashed, resume=True, **kw), progress=False, dataset=ds)

    _assert_bitwise_equal(_weights(ref), _weights(crashed))
    ref_steps = [r for r in read_metrics(ref) if r["kind"] == "step"]
    got_steps = [r for r in read_metrics(crashed) if r["kind"] == "step"]
    assert [r["step"] for r in got_steps] == [r["step"] for r in ref_steps] == list(range(1, 9))
    assert [r["loss"] for r in got_steps] == [r["loss"] for r in ref_steps]
    ref_knn = [r["knn_top1"] for r in read_metrics(ref) if r["kind"] == "epoch"]
    got_knn = [r["knn_top1"] for r in read_metrics(crashed) if r["kind"] == "epoch"]
    assert ref_knn == got_knn


def test_resume_may_extend_epochs_but_not_change_the_config(tmp_path):
    run = tmp_path / "run"
    training.pretrain(_cfg(run, epochs=1), progress=False, dataset=_images(8))
    with pytest.raises(CheckpointError, match=r"lr: None -> 0\.5.*temperature: 0\.1 -> 0\.2"):
        training.pretrain(
            _cfg(run, epochs=1, resume=True, lr=0.5, temperature=0.2),
            progress=False,
            dataset=_images(8),
        )
    with pytest.raises(CheckpointError, match="n_train was 8 and is now 12"):
        training.pretrain(_cfg(run, epochs=2, resume=True), progress=False, dataset=_images(12))
    training.pretrain(_cfg(run, epochs=2, resume=True), progress=False, dataset=_images(8))
    state = load_checkpoint(run / CHECKPOINT_FILE)
    assert state["step"] == 4 and state["finished"]
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "step"] == [1, 2, 3, 4]


_KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from deeplense_ssl import training
    from deeplense_ssl.config import PretrainConfig
    images = np.random.default_rng(0).random((12, 1, 16, 16), dtype=np.float32)
    cfg = PretrainConfig(**json.loads(sys.argv[1]))
    pause = float(sys.argv[2])  # seconds after each step (0: run through)
    training.pretrain(cfg, progress=False, dataset=images, on_step=lambda s, r: time.sleep(pause))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])  # plain, EMA target, EMA + centre
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, method):
    # float32: with `amp auto` a CPU with native bf16 would train this in bf16, where DINO on
    # batches of 2 diverged in some runs; resume itself is not about precision
    kw = dict(epochs=2, batch_size=2, checkpoint_every_steps=1, lr=0.05, method=method, amp="off")
    ref, killed, step = kill_and_resume(
        _KILL_SCRIPT, lambda out, **more: _cfg(out, **kw, **more), tmp_path, 3
    )
    assert 3 <= step < 12
    _assert_bitwise_equal(_weights(ref), _weights(killed))
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    real = train_loop.build_method_for
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        method = real(*args, **kwargs)
        criterion = method.loss

        def criterion_nan_from_step_3(out, aux):
            calls["n"] += 1
            loss = criterion(out, aux)
            return loss * float("nan") if calls["n"] >= 3 else loss

        method.loss = criterion_nan_from_step_3
        return method

    monkeypatch.setattr(train_loop, "build_method_for", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"nan.*step.*last good checkpoint"):
        training.pretrain(_cfg(run, epochs=3), progress=False, dataset=_images(8))
    state = load_checkpoint(run / CHECKPOINT_FILE)
    assert state["step"] == 2
    backbone = _part(state, "backbone")
    assert all(torch.isfinite(v).all() for v in backbone.values() if v.is_floating_point())
    assert not (run / "backbone.pt").exists()


def test_bad_data_and_batch_errors(tmp_path):
    images = _images(8)
    images[5, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match=r"image 5.*nan-policy"):
        training.pretrain(_cfg(tmp_path / "a"), progress=False, dataset=images)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        training.pretrain(_cfg(tmp_path / "b", batch_size=16), progress=False, dataset=_images(8))
    with pytest.raises(DataError, match="square"):
        training.pretrain(_cfg(tmp_path / "c"), progress=False, dataset=_images(8)[..., :12])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = training.pretrain(_cfg(tmp_path / "a", max_steps=2), progress=False, dataset=_images(8))
    b = training.pretrain(_cfg(tmp_path / "b", max_steps=2), progress=False, dataset=_images(8))
    c = training.pretrain(
        _cfg(tmp_path / "c", max_steps=2, seed=1), progress=False, dataset=_images(8)
    )
    _assert_bitwise_equal(_weights(a), _weights(b))
    wa, wc = _weights(a)["backbone"], _weights(c)["backbone"]
    assert not torch.equal(wa["conv1.weight"], wc["conv1.weight"])


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(0, 3, 50)
    assert torch.equal(a, epoch_permutation(0, 3, 50))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_permutation(0, 4, 50))
    assert not torch.equal(a, epoch_permutation(1, 3, 50))


def test_draw_loss_curve_plots_the_logged_values() -> None:
    from matplotlib.figure import Figure

    from deeplense_ssl.plots import draw_loss_curve

    records = [
        {"kind": "step", "step": 1, "loss": 2.0},
        {"kind": "step", "step": 2, "loss": float("nan")},  # skipped, not drawn as a gap
        {"kind": "step", "step": 3, "loss": 1.5},
        {"kind": "epoch", "step": 3, "loss": 1.75, "knn_top1": 0.4},
        {"kind": "epoch", "step": 6, "loss": 1.25, "knn_top1": None},
    ]
    fig = Figure()
    ax = fig.add_subplot()
    draw_loss_curve(ax, records)
    (step_line, epoch_line) = ax.get_lines()
    assert list(step_line.get_xdata()) == [1, 3] and list(step_line.get_ydata()) == [2.0, 1.5]
    assert list(epoch_line.get_xdata()) == [3, 6]
    assert list(epoch_line.get_ydata()) == [1.75, 1.25]
    twins = [a for a in fig.axes if a is not ax]
    assert len(twins) == 1
    (knn_line,) = twins[0].get_lines()
    assert list(knn_line.get_xdata()) == [3] and list(knn_line.get_ydata()) == [0.4]

    # Old logs without step numbers: drawn against their position.
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    draw_loss_curve(ax2, [{"loss": 3.0}, {"loss": 2.0}])
    (line,) = ax2.get_lines()
    assert list(line.get_xdata()) == [0, 1] and ax2.get_xlabel() == "log entry"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_pretrain_on_cuda_with_the_set_on_the_gpu(tmp_path, device):
    """The single-GPU path: the training set lives on the GPU (bf16 autocast, kNN monitor)."""
    data = tmp_path / "d.h5"
    ds = _imageset()
    write_hdf5(data, ds.images, ds.labels, ds.class_names)
    cfg = _cfg(tmp_path / "run", data=str(data), device=device, knn_monitor=True,
               knn_val_fraction=0.34)  # fmt: skip
    run = training.pretrain(cfg, progress=False)
    meta = json.loads((run / "config.json").read_text())
    assert meta["resolved"]["amp"] == "bfloat16"
    steps = [r for r in read_metrics(run) if r["kind"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)


def test_a_tensor_dataset_trains_like_the_same_numpy_array(tmp_path):
    images = _images(8)
    ref = training.pretrain(_cfg(tmp_path / "np", max_steps=1), progress=False, dataset=images)
    got = training.pretrain(
        _cfg(tmp_path / "tensor", max_steps=1), progress=False, dataset=torch.from_numpy(images)
    )
    a = _part(load_checkpoint(ref / CHECKPOINT_FILE), "backbone")
    b = _part(load_checkpoint(got / CHECKPOINT_FILE), "backbone")
    assert all(torch.equal(a[k], b[k]) for k in a)
