"""Mixed precision in fine-tuning (``FinetuneConfig.amp``): the backbone's forward passes run
in the asked dtype, the weights and the loss stay float32, float16 scales the loss, and the run
records its precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_finetune import fake_pretrain_run, toy_images, write_toy_h5

from deeplense_ssl import finetuning
from deeplense_ssl.backbones import build_backbone
from deeplense_ssl.config import FinetuneConfig, config_from_sources
from deeplense_ssl.heads import LinearHead
from deeplense_ssl.inference import ClassifierModel


def _model() -> ClassifierModel:
    torch.manual_seed(0)
    return ClassifierModel(build_backbone("resnet18", in_chans=1, stem="small"), LinearHead(512, 3))


def _train(model: ClassifierModel, amp: torch.dtype | None) -> list[dict]:
    """One epoch on 9 toy images (batches of 4; the last, of 1, is skipped), validation on 6."""
    images, labels = toy_images(3, size=16, seed=2)
    val_images, val_labels = toy_images(2, size=16, seed=3)
    history, _ = finetuning.train_end_to_end(
        model, torch.as_tensor(images), torch.as_tensor(labels), torch.as_tensor(val_images),
        torch.as_tensor(val_labels), ["a", "b", "c"], epochs=1, batch_size=4, lr=1e-2,
        backbone_lr=1e-3, weight_decay=1e-4, augment=True,
        generator=torch.Generator().manual_seed(0), amp=amp,
    )  # fmt: skip
    return history


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_training_and_validation_forward_in_the_amp_dtype(amp):
    model = _model()
    seen: list[tuple[bool, torch.dtype]] = []
    model.backbone.conv1.register_forward_hook(
        lambda mod, inp, out: seen.append((mod.training, out.dtype))
    )
    history = _train(model, amp)
    want = amp or torch.float32
    assert seen == [(True, want)] * 2 + [(False, want)] * 2  # 2 batches each, train and val
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_loss"])


def test_float16_scales_the_loss(monkeypatch):
    scaled: list[float] = []

    class CountingScaler(torch.amp.GradScaler):
        def scale(self, outputs):
            scaled.append(float(outputs.detach()))
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", CountingScaler)
    _train(_model(), torch.float16)
    assert len(scaled) == 2  # one per optimiser step
    scaled.clear()
    _train(_model(), torch.bfloat16)  # bf16 has float32's range: no scaler
    assert scaled == []


@pytest.fixture(scope="module")
def toy(module_tmp):
    root = module_tmp("ft_amp")
    write_toy_h5(root / "train.h5", n_per_class=10, seed=0)
    fake_pretrain_run(root / "pretrain")
    return root


def _probe(toy, out, **kw) -> tuple[dict, np.ndarray]:
    values = {"data": str(toy / "train.h5"), "checkpoint": str(toy / "pretrain"), "out": str(out)}
    values.update(epochs=1, batch_size=16, min_steps=0, feature_dihedral=False, **kw)
    run = finetuning.finetune(config_from_sources(FinetuneConfig, None, values), progress=False)
    config = json.loads((run / "config.json").read_text())
    return config, np.load(run / "train_embeddings.npz")["embeddings"]


def test_probe_features_follow_amp_and_the_run_records_it(toy, tmp_path):
    default, emb32 = _probe(toy, tmp_path / "fp32")
    assert default["config"]["amp"] == "off" and default["resolved"]["amp"] == "off"
    bf16, emb16 = _probe(toy, tmp_path / "bf16", amp="bf16")
    assert bf16["resolved"]["amp"] == "bfloat16"
    assert emb16.dtype == np.float32  # cast back before caching
    assert not np.array_equal(emb16, emb32)  # the features did go through bf16 ...
    np.testing.assert_allclose(emb16, emb32, rtol=0.1, atol=0.05 * np.abs(emb32).max())  # ... only
