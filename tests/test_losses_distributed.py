"""Cross-rank statistics of VICReg, Barlow Twins and DINO: 2 gloo processes vs 1 process.

Each rank holds half of a fixed global batch. With ``gather_distributed=True``:

* the mean of the ranks' losses is the loss of the concatenated batch;
* the gradient on each rank's input rows is ``world_size`` times the full-batch gradient of
  those rows (the convention of ``gather_with_grad``, shared with NT-Xent), so that
* DDP's average of the parameter gradients equals the single-process gradient (checked with a
  linear projector wrapped in ``DistributedDataParallel``);
* without gathering, the gradients differ (the test can fail);
* DINO's centre after the all-reduce equals the single-process centre of the whole batch.

The processes are forked once for the module (about a second) and write their results to disk.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deeplense_ssl.losses import DINOLoss, barlow_twins_loss, vicreg_loss

WORLD = 2
LOCAL = 4  # rows per rank
DIM = 5
IN_DIM = 6
K = 7
LOSSES = {"vicreg": vicreg_loss, "barlow": barlow_twins_loss}


def _global_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(WORLD * LOCAL, DIM, generator=g) * torch.tensor([0.5, 2.0, 1.0, 0.3, 1.2])
    return z_a, z_a + 0.5 * torch.randn(WORLD * LOCAL, DIM, generator=g)


def _global_images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL, IN_DIM, generator=g), torch.randn(
        WORLD * LOCAL, IN_DIM, generator=g
    )


def _global_teacher() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(WORLD * LOCAL, K, generator=g) + i for i in range(2)]


def _projector() -> nn.Linear:
    torch.manual_seed(3)
    return nn.Linear(IN_DIM, DIM)


def _projector_grads(model: nn.Module, loss_fn, x_a, x_b, gather: bool) -> torch.Tensor:
    z = model(torch.cat([x_a, x_b]))  # one forward under DDP
    loss = loss_fn(z[: len(x_a)], z[len(x_a) :], gather_distributed=gather)
    loss.backward()
    return loss.detach()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD
    )
    try:
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        out: dict = {}
        full_a, full_b = _global_embeddings()
        img_a, img_b = _global_images()
        for name, loss_fn in LOSSES.items():
            for gather in (True, False):
                a, b = (t[rows].clone().requires_grad_() for t in (full_a, full_b))
                loss = loss_fn(a, b, gather_distributed=gather)
                loss.backward()
                out[f"{name}/{gather}"] = {"loss": loss.detach(), "grads": (a.grad, b.grad)}
            model = _projector()
            ddp = DistributedDataParallel(model)
            loss = _projector_grads(ddp, loss_fn, img_a[rows], img_b[rows], gather=True)
            out[f"{name}/ddp"] = {"loss": loss, "grads": [p.grad for p in model.parameters()]}
        dino = DINOLoss(K, center_momentum=0.7)
        local_teacher = [t[rows] for t in _global_teacher()]
        dino.update_center(local_teacher)
        dino.update_center([t * 2 for t in local_teacher])
        out["dino_center"] = dino.center.clone()
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(module_tmp) -> list[dict]:
    tmp = module_tmp("losses_distributed")
    torch.multiprocessing.start_processes(
        _worker,
        args=(str(tmp / "init"), str(tmp)),
        nprocs=WORLD,
        join=True,
        # fork avoids re-importing torch (~0.2 s instead of ~8 s); spawn where fork is missing.
        start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gathered_loss_and_input_gradients_match_one_process(ranks, name: str) -> None:
    full_a, full_b = (t.clone().requires_grad_() for t in _global_embeddings())
    ref = LOSSES[name](full_a, full_b)
    ref.backward()
    results = [r[f"{name}/True"] for r in ranks]
    torch.testing.assert_close(sum(r["loss"] for r in results) / WORLD, ref.detach())
    for view, full in enumerate((full_a, full_b)):
        grads = torch.cat([r["grads"][view] for r in results])
        torch.testing.assert_close(grads / WORLD, full.grad)
    if name == "barlow":  # every rank computes the global loss itself
        torch.testing.assert_close(results[0]["loss"], ref.detach())
    else:  # VICReg's invariance term stays local: the ranks' losses differ
        assert not torch.allclose(results[0]["loss"], results[1]["loss"])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_without_gathering_the_gradients_differ(ranks, name: str) -> None:
    full_a, full_b = (t.clone().requires_grad_() for t in _global_embeddings())
    LOSSES[name](full_a, full_b).backward()
    local = torch.cat([r[f"{name}/False"]["grads"][0] for r in ranks])
    assert not torch.allclose(local / WORLD, full_a.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ddp_parameter_gradients_equal_the_global_batch_gradients(ranks, name: str) -> None:
    model = _projector()
    img_a, img_b = _global_images()
    ref = _projector_grads(model, LOSSES[name], img_a, img_b, gather=False)
    torch.testing.assert_close(sum(r[f"{name}/ddp"]["loss"] for r in ranks) / WORLD, ref)
    for r in ranks:  # DDP averaged the gradients: identical on both ranks
        for got, want in zip(r[f"{name}/ddp"]["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(got, want.grad, rtol=1e-5, atol=1e-6)


def test_dino_center_is_all_reduced(ranks) -> None:
    ref = DINOLoss(K, center_momentum=0.7)
    teacher = _global_teacher()
    ref.update_center(teacher)
    ref.update_center([t * 2 for t in teacher])
    for r in ranks:
        torch.testing.assert_close(r["dino_center"], ref.center)
    # the local halves alone would give another centre (the test can fail)
    local = DINOLoss(K, center_momentum=0.7)
    local.update_center([t[:LOCAL] for t in teacher])
    local.update_center([2 * t[:LOCAL] for t in teacher])
    assert not torch.allclose(local.center, ref.center)
