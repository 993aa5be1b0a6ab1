"""DDP on CPU (gloo, 2 processes): same loss and gradients as one process on the whole batch.

The equality test uses a tiny BatchNorm-free network and deterministic views: BatchNorm in
training mode normalises with the statistics of each rank's own half batch, which differ from
the statistics of the concatenated batch, so a ResNet would (correctly) not match a single
process. On multi-GPU runs the loop converts BatchNorm to ``SyncBatchNorm`` (statistics over
the global batch); PyTorch implements SyncBatchNorm for accelerators only, not for gloo on CPU.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deeplense_ssl import training
from deeplense_ssl.checkpoint import load_checkpoint
from deeplense_ssl.config import PretrainConfig
from deeplense_ssl.distributed import DistInfo, all_reduce_mean, shard_batch_indices
from deeplense_ssl.errors import CheckpointError
from deeplense_ssl.methods.contrastive import SimCLR
from deeplense_ssl.runs import CHECKPOINT_FILE
from deeplense_ssl.training.step import training_step

WORLD = 2
GLOBAL_BATCH = 8


class _FixedViews(nn.Module):
    """Deterministic, per-image views: the image and a scaled mirror image of it."""

    def views(self, x: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        return [x, 0.9 * x.flip(-1) + 0.05][:n_views]


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


def _global_batch() -> torch.Tensor:
    return torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _tiny_simclr(model: nn.Module) -> SimCLR:
    """The real SimCLR method (NT-Xent gathered across ranks) around the tiny network, with
    deterministic views and no projection head."""
    model.feature_dim = 8
    cfg = PretrainConfig(data="x", temperature=0.5, n_views=2, proj_hidden_dim=4, proj_out_dim=4)
    method = SimCLR(model, cfg, in_chans=1, image_size=8, distributed=True)
    method.transform, method.head = _FixedViews(), nn.Identity()
    return method


def _one_step(model: nn.Module, x: torch.Tensor, wrap=None) -> tuple[torch.Tensor, nn.Module]:
    method = _tiny_simclr(model)
    net = wrap(method) if wrap is not None else method
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return training_step(net, method, x, opt), model


def _images() -> np.ndarray:
    return np.random.default_rng(0).random((12, 1, 16, 16), dtype=np.float32)


def _pretrain_cfg(out: str, **kw) -> PretrainConfig:
    base = dict(stem="small", batch_size=2, epochs=1, method="contrastive-rotation")
    base.update(proj_hidden_dim=16, proj_out_dim=8, device="cpu")
    return PretrainConfig(out=out, **{**base, **kw})


def _worker(rank: int, port: int, port2: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        # 1. one training step of the real step function, DDP + NT-Xent gathered across ranks
        from torch.nn.parallel import DistributedDataParallel

        model = _tiny_model()
        idx = shard_batch_indices(torch.arange(GLOBAL_BATCH), rank, WORLD)
        grads = {}
        loss, _ = _one_step(model, _global_batch()[idx], wrap=DistributedDataParallel)
        # the optimiser stepped already; gradients are kept until the next zero_grad
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        mean_loss = all_reduce_mean(loss, DistInfo(rank, WORLD))
        torch.save(
            {"loss": loss, "mean_loss": mean_loss, "grads": grads, "params": model.state_dict()},
            f"{tmp}/step_rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
    # 2. the whole loop on 2 ranks, joining the group from torchrun's environment variables
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": WORLD, "MASTER_PORT": port2}
    os.environ.update({k: str(v) for k, v in env.items()}, MASTER_ADDR="127.0.0.1")
    training.pretrain(_pretrain_cfg(f"{tmp}/run"), progress=False, dataset=_images())
    assert not dist.is_initialized()  # pretrain destroyed the group it created


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_batch_indices_concatenate_to_the_global_batch():
    idx = torch.arange(10, 22)
    parts = [shard_batch_indices(idx, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx)
    assert all(len(p) == 4 for p in parts)
    with pytest.raises(ValueError, match="cannot be split"):
        shard_batch_indices(torch.arange(7), 0, 2)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    ports = (_free_port(), _free_port())
    mp.spawn(_worker, args=(*ports, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"step_rank{r}.pt", weights_only=True) for r in range(WORLD)]

    model = _tiny_model()
    ref_loss, _ = _one_step(model, _global_batch())
    ref_grads = {k: p.grad for k, p in model.named_parameters()}

    # the mean of the ranks' losses is the loss of the whole batch
    torch.testing.assert_close(ranks[0]["mean_loss"], ref_loss)
    torch.testing.assert_close(ranks[1]["mean_loss"], ref_loss)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # local losses differ
    for r in ranks:  # DDP-averaged gradients equal the single-process gradients
        for key, grad in ref_grads.items():
            torch.testing.assert_close(r["grads"][key], grad, rtol=1e-5, atol=1e-7)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(r["params"][key], value, rtol=1e-5, atol=1e-7)

    # the full loop (env-var set-up as under torchrun): rank 0 wrote the run with the global
    # batch and the learning rate scaled by it
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    resolved = state["resolved"]
    assert resolved["world_size"] == 2 and resolved["global_batch_size"] == 4
    assert resolved["lr"] == pytest.approx(0.3 * 4 / 256)
    assert state["step"] == 3 and len(state["rng"]) == 2  # 12 images / 4 per global batch
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert (tmp_path / "run" / "backbone.pt").exists()
    # resuming with another number of processes is refused (the data order would change)
    with pytest.raises(CheckpointError, match="world_size was 2 and is now 1"):
        training.pretrain(
            _pretrain_cfg(str(tmp_path / "run"), resume=True, epochs=2),
            progress=False,
            dataset=_images(),
        )
