"""Fine-tuning: run folder contract, frozen vs trained backbones, splits, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_finetune import fake_pretrain_run, write_toy_h5

from deeplense_ssl import finetuning
from deeplense_ssl.checkpoint import load_state_dict_file
from deeplense_ssl.config import FinetuneConfig, config_from_sources
from deeplense_ssl.datasets import label_fraction_subset, load_dataset
from deeplense_ssl.errors import CheckpointError, ConfigError, DataError
from deeplense_ssl.finetuning import _fold_standardisation, finetune, label_budget_split
from deeplense_ssl.heads import LinearHead, MLPHead
from deeplense_ssl.inference import load_finetuned
from deeplense_ssl.runs import MODEL_FILE


@pytest.fixture(scope="module")
def toy(module_tmp):
    root = module_tmp("ft")
    write_toy_h5(root / "train.h5", n_per_class=20, seed=0)
    fake_pretrain_run(root / "pretrain")
    return root


def _cfg(toy, out, **kw):
    values = {
        "data": str(toy / "train.h5"),
        "checkpoint": str(toy / "pretrain"),
        "epochs": 2,
        "batch_size": 32,
        # these tests count epochs; the steps budget has its own tests (test_finetuning_budget)
        "min_steps": 0,
        "out": str(out),
    }
    values.update(kw)
    return config_from_sources(FinetuneConfig, None, values)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_linear_probe_writes_the_run_folder_and_keeps_backbone_frozen(toy, tmp_path):
    # 10 labels per class, 2 of them for validation: model selection on the validation split
    cfg = _cfg(toy, tmp_path / "probe", label_fraction=0.5, min_val_per_class=2)
    out = finetune(cfg, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        MODEL_FILE,
        "metrics.jsonl",
        "history.png",
        "val_metrics.json",
        "label_subset.npy",
        "train_embeddings.npz",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    state = torch.load(out / MODEL_FILE, weights_only=True)
    pretrained = load_state_dict_file(toy / "pretrain" / "backbone.pt")
    assert _same_state(state["backbone_state"], pretrained)  # frozen: unchanged weights
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["label_fraction"] == 0.5
    assert cfg["resolved"]["normalize"] == "minmax"  # taken from the pretrain run
    assert cfg["resolved"]["model_selection"] == "val"
    assert cfg["pretrain"]["method"] == "simclr"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    val = json.loads((out / "val_metrics.json").read_text())
    best = max(rows, key=lambda r: (r["val_auc_macro"], -r["val_loss"]))
    assert val["best_epoch"] == best["epoch"]


def test_label_budget_includes_the_validation_labels(toy, tmp_path):
    """Protocol change (issue 12): the validation split is carved out of the labelled subset,
    so at label fraction f the run sees f of the labels in total (it used to be 15% of *all*
    images for validation on top of f of the rest)."""
    cfg = _cfg(toy, tmp_path / "p", label_fraction=0.5, epochs=1, min_val_per_class=2)
    out = finetune(cfg, progress=False)
    subset = np.load(out / "label_subset.npy")
    labels = load_dataset(toy / "train.h5").labels
    budget = label_budget_split(labels, 0.5, cfg.val_fraction, 2, seed=cfg.seed)
    np.testing.assert_array_equal(subset, budget.train)  # the run used this split
    val = budget.val
    assert not set(subset) & set(val)
    labelled = label_fraction_subset(np.arange(len(labels)), labels, 0.5, seed=cfg.seed)
    np.testing.assert_array_equal(np.sort(np.concatenate([subset, val])), labelled)
    assert len(subset) + len(val) == 0.5 * len(labels)  # 30 of the 60 labels, no more
    # per class: round(0.5 * 20) = 10 labelled, round(0.15 * 10) = 2 of them validate
    np.testing.assert_array_equal(np.bincount(labels[subset], minlength=3), [8, 8, 8])
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=3), [2, 2, 2])
    ds = json.loads((out / "config.json").read_text())["data_summary"]
    assert ds["n_train_labelled"] == len(subset) and ds["n_val"] == len(val)


def test_loaded_model_reproduces_the_probe(toy, tmp_path):
    out = finetune(_cfg(toy, tmp_path / "mlp", head="mlp", mlp_hidden_dim=16), progress=False)
    model, spec = load_finetuned(out)
    assert spec["head_kind"] == "mlp" and spec["class_names"] == ["no_sub", "cdm", "axion"]
    assert isinstance(model.head, MLPHead)
    images = load_dataset(toy / "train.h5").images[:6]
    with torch.no_grad():
        logits = model(torch.as_tensor(images))
        assert torch.allclose(logits, model.head(model.embed(torch.as_tensor(images))))
    assert logits.shape == (6, 3)


def test_full_finetune_and_baselines_train_what_they_should(toy, tmp_path):
    pretrained = load_state_dict_file(toy / "pretrain" / "backbone.pt")
    full = torch.load(
        finetune(_cfg(toy, tmp_path / "full", head="full", epochs=1), progress=False) / MODEL_FILE,
        weights_only=True,
    )
    assert not _same_state(full["backbone_state"], pretrained)
    assert full["spec"]["mode"] == "end_to_end"
    rnd = torch.load(
        finetune(_cfg(toy, tmp_path / "rnd", init="random", epochs=1), progress=False) / MODEL_FILE,
        weights_only=True,
    )
    assert not _same_state(rnd["backbone_state"], pretrained)  # random weights, not pretrained
    assert rnd["spec"]["stem"] == "small"  # same architecture as the pretrain run
    scratch_cfg = _cfg(toy, tmp_path / "scr", init="scratch", checkpoint=None, stem="small")
    scratch_cfg.epochs = 1
    out = finetune(scratch_cfg, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved"]["mode"] == "end_to_end" and cfg["pretrain"] is None
    with pytest.raises(ConfigError, match="--from-scratch"):
        finetune(_cfg(toy, tmp_path / "bad", init="random", head="full"), progress=False)


def test_lp_ft_fine_tunes_the_backbone_from_the_linear_probe(toy, tmp_path, monkeypatch):
    probe = finetune(_cfg(toy, tmp_path / "probe", head="linear"), progress=False)
    probe_head = torch.load(probe / MODEL_FILE, weights_only=True)["head_state"]
    at_start = {}
    real = finetuning.train_end_to_end

    def spy(model, *args, **kwargs):
        at_start.update({k: v.clone() for k, v in model.head.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(finetuning, "train_end_to_end", spy)
    run = finetune(_cfg(toy, tmp_path / "lpft", head="lp-ft"), progress=False)
    # the same seed draws the same probe: the fine-tune starts from the probe run's head
    assert _same_state(at_start, probe_head)
    saved = torch.load(run / MODEL_FILE, weights_only=True)
    assert not _same_state(saved["backbone_state"], torch.load(
        probe / MODEL_FILE, weights_only=True)["backbone_state"])  # fmt: skip
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in history] == ["probe"] * 2 + ["fine-tune"] * 2
    steps = [r["step"] for r in history]
    assert steps == sorted(set(steps))  # the fine-tune's steps continue the probe's count
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["mode"] == "end_to_end" and resolved["optimizer_steps"] == steps[-1]
    model, spec = load_finetuned(run)  # a plain backbone + linear head, as the full fine-tune's
    assert spec["head_kind"] == "linear" and isinstance(model.head, LinearHead)
    assert _same_state(model.head.state_dict(), saved["head_state"])
    for init, flag in (("random", "--from-scratch"), ("scratch", "--head full")):
        with pytest.raises(ConfigError, match=flag):
            finetune(_cfg(toy, tmp_path / init, init=init, head="lp-ft"), progress=False)


def test_channel_mismatch_is_one_clear_error_and_writes_nothing(toy, tmp_path):
    rgb = write_toy_h5(tmp_path / "rgb.h5", n_per_class=4, chans=3)
    out = tmp_path / "never"
    with pytest.raises(CheckpointError, match=r"pretrain.*1 channel.*rgb\.h5"):
        finetune(_cfg(toy, out, data=str(rgb)), progress=False)
    assert not out.exists()


def test_folding_the_standardisation_is_exact():
    torch.manual_seed(0)
    feats = torch.randn(10, 6) * 3 + 5
    mean, std = feats.mean(0), feats.std(0)
    for head in (LinearHead(6, 3), MLPHead(6, 3, hidden_dim=4)):
        want = head((feats - mean) / std)
        _fold_standardisation(head, mean, std)
        torch.testing.assert_close(head(feats), want, rtol=1e-5, atol=1e-5)


def test_other_image_size_than_pretraining_needs_an_explicit_choice(toy, tmp_path):
    big = write_toy_h5(tmp_path / "big.h5", n_per_class=6, size=24)
    with pytest.raises(DataError, match=r"big\.h5.*24x24.*16x16.*--image-size 16"):
        finetune(_cfg(toy, tmp_path / "no", data=str(big)), progress=False)
    assert not (tmp_path / "no").exists()
    out = finetune(_cfg(toy, tmp_path / "yes", data=str(big), image_size=16, epochs=1), False)
    assert json.loads((out / "config.json").read_text())["spec"]["input_hw"] == [16, 16]
