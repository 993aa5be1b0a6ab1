"""``pretrain(cfg)``: the self-supervised training loop in named steps.

plan (what the data and the config fix) -> build (backbone, method, optimiser) -> restore (a
checkpoint, on resume) -> loop (steps, logs, monitors, checkpoints) -> finish (``backbone.pt``,
the final config and the loss curve). The loop knows nothing about any particular method: it
calls the :class:`~deeplense_ssl.methods.Method` contract.

Determinism and resume: the epoch's data order is ``randperm`` from a generator seeded by
``(seed, epoch)``; augmentation draws from the global torch RNG, whose state (and NumPy's,
Python's and CUDA's) is saved in every checkpoint with the method state, optimiser, scheduler
and grad-scaler states. ``resume=True`` continues a killed run (SIGKILL included) and ends with
bitwise the weights of an uninterrupted run on CPU.

Distributed (torchrun, see ``distributed.py``): ``batch_size`` is per process, the learning
rate is scaled by the global batch, the losses gather or all-reduce their batch statistics
across ranks, BatchNorm is synchronised on multi-GPU (``sync_batchnorm``), rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__
from ..backbones import backbone_state_dict_for_torchvision, build_backbone
from ..checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from ..config import PretrainConfig, config_to_dict
from ..datasets import stratified_split
from ..distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    gather_objects,
    setup_distributed,
)
from ..errors import ConfigError, DataError, TrainingDivergedError
from ..io import format_bytes
from ..methods import Method, get_method
from ..optim import build_optimizer, warmup_cosine
from ..plots import plot_loss_curve
from ..runs import BACKBONE_FILE, CHECKPOINT_FILE, METRICS_FILE, read_metrics, write_run_config
from ..runtime import amp_name, resolve_amp_dtype, resolve_device, seed_everything
from ..streaming import StreamReader
from ..tracking import Tracker, final_metrics, open_tracker, require_tracker
from .data import (
    IN_MEMORY_DATA,
    MemoryBatches,
    Prefetcher,
    StreamBatches,
    TrainingData,
    epoch_permutation,
    first_rendering,
    open_training_data,
    put_on_device,
)
from .monitoring import (
    MetricsLog,
    collapse_monitor,
    knn_bank_indices,
    knn_monitor,
    monitor_indices,
)
from .resume import FINGERPRINT_KEY, check_resolved, check_resume, method_state
from .step import training_step

OnStep = Callable[[int, dict[str, Any]], None]


def pretrain(
    cfg: PretrainConfig,
    progress: bool = True,
    *,
    dataset: Any = None,
    on_step: OnStep | None = None,
) -> Path:
    """Self-supervised pretraining of a backbone; writes and returns the run folder ``cfg.out``.

    Args:
        cfg: the configuration (validated here). ``cfg.batch_size`` is per process.
        progress: show a tqdm progress bar (rank 0 only).
        dataset: optional in-memory data instead of reading ``cfg.data``: an ``ImageSet`` (or
            any object with ``images`` (N, C, H, W) float32, ``labels`` and ``class_names``), or
            an array ``(N, C, H, W)``. It is used as given (already cleaned and normalised);
            ``cfg.data`` then only labels the run (``"<in-memory>"`` if empty).
        on_step: called on rank 0 after every optimiser step (and after any checkpoint written
            at that step) as ``on_step(step, record)``; raising in it stops the run like a crash
            (used by the resume tests).

    Returns:
        The run folder, holding ``config.json``, ``checkpoint.pt``, ``backbone.pt``,
        ``metrics.jsonl`` and ``loss_curve.png`` (see ``runs.py``).

    Raises:
        ConfigError: invalid config (or a batch larger than the data).
        DataError: unreadable data, non-square or non-finite images.
        CheckpointError: a run folder with a checkpoint and no ``resume``, or a resume whose
            config differs in anything but ``epochs`` / ``max_steps``.
        TrainingDivergedError: the loss became NaN or inf; the last good checkpoint is kept.
    """
    cfg = dataclasses.replace(cfg)
    if dataset is not None and not cfg.data:
        cfg.data = IN_MEMORY_DATA
    cfg.validate()
    require_tracker(cfg.log)  # a missing extra fails now, not after loading the data
    info = setup_distributed(resolve_device(cfg.device))
    try:
        return _run(cfg, info, progress, dataset, on_step)
    finally:
        cleanup_distributed(info)


def _run(
    cfg: PretrainConfig, info: DistInfo, progress: bool, dataset: Any, on_step: OnStep | None
) -> Path:
    run_dir = Path(cfg.out)
    cfg_dict = config_to_dict(cfg)
    state = check_resume(run_dir, cfg_dict, cfg.resume)
    data = open_training_data(cfg, dataset, None if state is None else state["resolved"], info)
    try:
        plan = make_plan(cfg, info, data)
        if state is not None:
            check_resolved(run_dir, state["resolved"], plan.resolved)
        session = build(cfg, info, plan, data, run_dir, cfg_dict)
        if state is not None:
            restore(session, state)
        open_run_folder(session)
        with session.metrics.tracker:  # closed after finish(), marked failed on an exception
            try:
                train_loop(session, progress, on_step)
            finally:
                session.metrics.close()
            finish(session)
    finally:
        data.close()
    return run_dir


# --------------------------------------------------------------------------------------------
# plan: what the data and the config fix
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Sizes and schedule of one pretraining run (``resolved`` is written to ``config.json``)."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    stop_step: int
    warmup_steps: int
    lr: float
    amp: torch.dtype | None
    resolved: dict[str, Any]


def _knn_split(cfg: PretrainConfig, labels: np.ndarray, class_names: list[str]):
    if not cfg.knn_monitor:
        return np.arange(len(labels)), np.arange(0)
    if len(class_names) < 2 or len(np.unique(labels)) < 2:
        raise ConfigError("knn_monitor needs labelled data with at least two classes.")
    split = stratified_split(labels, val_fraction=cfg.knn_val_fraction, seed=cfg.seed)
    train_idx, val_idx = np.asarray(split["train"]), np.asarray(split["val"])
    if len(val_idx) == 0:
        raise ConfigError("knn_val_fraction leaves no validation images for the kNN monitor.")
    return train_idx, val_idx


def make_plan(cfg: PretrainConfig, info: DistInfo, data: TrainingData) -> Plan:
    """Split, batch arithmetic, schedule length, learning rate and precision of the run, and
    the fingerprint of its data (a resume on other data is refused)."""
    class_names = data.class_names
    train_idx, val_idx = _knn_split(cfg, data.labels, class_names)
    n_train, in_chans, size = len(train_idx), data.shape[-3], data.shape[-1]
    global_batch = cfg.batch_size * info.world_size
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{n_train} training images are fewer than one global batch ({cfg.batch_size} x "
            f"{info.world_size} process(es)); lower --batch-size."
        )
    total_steps = cfg.epochs * steps_per_epoch
    stop_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    assert cfg.base_lr is not None and cfg.optimizer is not None  # filled by cfg.validate()
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * global_batch / 256
    amp = resolve_amp_dtype(cfg.amp, info.device)
    resolved = {
        "world_size": info.world_size,
        "global_batch_size": global_batch,
        "lr": lr,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "stop_step": stop_step,
        "warmup_steps": warmup_steps,
        "n_train": n_train,
        "n_val": len(val_idx),
        "input_shape": [in_chans, size, size],
        "class_names": class_names,
        "device": info.device.type,
        "amp": amp_name(amp),
        FINGERPRINT_KEY: data.fingerprint,  # a resume on other data is refused
        "data_mode": data.mode,  # a resume keeps it (and the streaming order)
    }
    if data.layout is not None:
        resolved["stream_layout"] = dataclasses.asdict(data.layout)
    if data.norm_stats is not None:  # zscore-dataset, fit on the whole set (kept on resume)
        resolved["norm_stats"] = data.norm_stats
    return Plan(
        train_idx, val_idx, global_batch, steps_per_epoch, total_steps, stop_step,
        warmup_steps, lr, amp, resolved,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# build: the method, the optimiser and the data on the device
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    """Everything a running pretraining holds."""

    cfg: PretrainConfig
    info: DistInfo
    plan: Plan
    run_dir: Path
    cfg_dict: dict[str, Any]
    method: Method
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data: Tensor | None  # the training set on the device (None: streamed from ``source``)
    labels: np.ndarray
    source: TrainingData
    val_data: Tensor | None = None
    bank_idx: np.ndarray | None = None
    monitor_idx: np.ndarray | None = None
    step: int = 0
    metrics_bytes: int | None = None
    saved_step: int | None = None  # step of the latest checkpoint (None: none yet)
    metrics: MetricsLog = field(init=False)


def build_method_for(cfg: PretrainConfig, in_chans: int, size: int, distributed: bool) -> Method:
    """Seed, then build the backbone and ``cfg.method`` around it (same draws every run)."""
    seed_everything(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_chans=in_chans, stem=cfg.stem)
    return get_method(cfg.method)(backbone, cfg, in_chans, size, distributed)


def _wrap(method: Method, cfg: PretrainConfig, info: DistInfo) -> nn.Module:
    net: nn.Module = method
    if info.enabled:
        device_ids = [info.device] if info.device.type == "cuda" else None
        net = DistributedDataParallel(method, device_ids=device_ids)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def build(
    cfg: PretrainConfig,
    info: DistInfo,
    plan: Plan,
    source: TrainingData,
    run_dir: Path,
    cfg_dict: dict[str, Any],
) -> Session:
    """The method on the device, its optimiser, schedule, grad scaler, and the data."""
    device = info.device
    in_chans, size = source.shape[-3], source.shape[-1]
    method = build_method_for(cfg, in_chans, size, info.enabled)
    if info.enabled and device.type == "cuda" and cfg.sync_batchnorm:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    method.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
    assert cfg.optimizer is not None  # filled by cfg.validate() from the method's default
    optimizer = build_optimizer(
        cfg.optimizer, method, plan.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, plan.warmup_steps, plan.total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=plan.amp == torch.float16)
    if info.rank > 0:  # distinct augmentations per rank; rank 0 matches a single process
        torch.manual_seed(cfg.seed + 7919 * info.rank)
    train_idx, images = plan.train_idx, source.images
    data = None
    if images is not None:  # in memory: the training rows on the device (or pinned host)
        data = put_on_device(images if len(train_idx) == len(images) else images[train_idx], device)
    session = Session(
        cfg, info, plan, run_dir, cfg_dict, method, _wrap(method, cfg, info), optimizer,
        scheduler, scaler, data, source.labels, source,
    )  # fmt: skip
    if cfg.knn_monitor:
        session.val_data = torch.from_numpy(_val_images(source, plan.val_idx))
        session.bank_idx = knn_bank_indices(len(train_idx), cfg.seed)
    if cfg.collapse_monitor_size:
        session.monitor_idx = monitor_indices(len(train_idx), cfg.collapse_monitor_size, cfg.seed)
    return session


def _val_images(source: TrainingData, val_idx: np.ndarray) -> np.ndarray:
    """The kNN monitor's held-out images, read once (refused beyond the memory budget)."""
    nbytes = len(val_idx) * 4 * math.prod(source.shape)
    if source.mode == "stream" and source.budget is not None and nbytes > source.budget // 4:
        raise ConfigError(
            f"the kNN monitor's {len(val_idx)} held-out images ({format_bytes(nbytes)}) take "
            "more than a quarter of the memory budget (--max-memory-gb); lower "
            "--knn-val-fraction or turn the monitor off."
        )
    return source.read(val_idx)


def _train_rows(s: Session, idx: np.ndarray) -> Tensor:
    """Training images at positions ``idx`` of the training split (monitors)."""
    if s.data is not None:
        return s.data[torch.from_numpy(idx).to(s.data.device)]
    return torch.from_numpy(s.source.read(s.plan.train_idx[idx]))


# --------------------------------------------------------------------------------------------
# restore and the run folder
# --------------------------------------------------------------------------------------------


def restore(s: Session, state: dict[str, Any]) -> None:
    """Load the checkpoint ``state`` into the session (method, optimiser, schedule, RNG)."""
    s.method.load_state_dict(method_state(state, s.run_dir / CHECKPOINT_FILE))
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    p = s.plan
    for group, base in zip(s.optimizer.param_groups, s.scheduler.base_lrs, strict=True):
        group["lr"] = base * warmup_cosine(s.scheduler.last_epoch, p.warmup_steps, p.total_steps)
    s.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"][s.info.rank])
    s.step, s.metrics_bytes = int(state["step"]), int(state["metrics_bytes"])
    s.saved_step = s.step


def _run_config(s: Session, resolved: dict[str, Any]) -> dict[str, Any]:
    spec = s.method.backbone.spec
    return {"config": s.cfg_dict, "resolved": resolved, "backbone_spec": spec}


def open_run_folder(s: Session) -> None:
    """Write ``config.json`` (rank 0), drop a stale ``backbone.pt``, open the metrics log and
    its tracker (``cfg.log``; a resumed run continues its tracker run from ``s.step``)."""
    tracker = Tracker()
    if s.info.is_main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(s.run_dir, _run_config(s, s.plan.resolved))
        if s.step < s.plan.stop_step:
            (s.run_dir / BACKBONE_FILE).unlink(missing_ok=True)  # not final any more
        tracker = open_tracker(s.cfg.log, s.run_dir, uri=s.cfg.log_uri, start_step=s.step)
        tracker.log_params(_run_config(s, s.plan.resolved))
    s.metrics = MetricsLog(s.run_dir / METRICS_FILE, s.info.is_main, s.metrics_bytes, tracker)


def save(s: Session, finished: bool) -> None:
    """Write ``checkpoint.pt`` (rank 0; every rank's RNG state is gathered first)."""
    rng = gather_objects(capture_rng_state(), s.info)
    s.saved_step = s.step
    if not s.info.is_main:
        return
    p, step = s.plan, s.step
    save_checkpoint(
        s.run_dir / CHECKPOINT_FILE,
        {
            "format": CHECKPOINT_FORMAT,
            "deeplense_ssl_version": __version__,
            "config": s.cfg_dict,
            "resolved": p.resolved,
            "backbone_spec": s.method.backbone.spec,
            "step": step,
            "epoch": step // p.steps_per_epoch,
            "finished": finished,
            "method": s.method.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(),
            "rng": rng,
            "data_order": {
                "seed": s.cfg.seed,
                "epoch": step // p.steps_per_epoch,
                "batch_in_epoch": step % p.steps_per_epoch,
                "global_batch_size": p.global_batch,
                "n_train": len(p.train_idx),
            },
            "metrics_bytes": s.metrics.offset(),
        },
    )


def finish(s: Session) -> None:
    """Write ``backbone.pt``, the final ``config.json`` and ``loss_curve.png`` (rank 0)."""
    if s.info.is_main:
        backbone_state = backbone_state_dict_for_torchvision(s.method.export_backbone())
        save_checkpoint(s.run_dir / BACKBONE_FILE, backbone_state)
        final = {
            **s.plan.resolved,
            "final_step": s.step,
            "final_epoch": s.step / s.plan.steps_per_epoch,
        }
        write_run_config(s.run_dir, _run_config(s, final))
        plot_loss_curve(s.run_dir)
        s.metrics.tracker.log_metrics(s.step, final_metrics(read_metrics(s.run_dir)))
    barrier(s.info)


# --------------------------------------------------------------------------------------------
# loop
# --------------------------------------------------------------------------------------------


@dataclass
class _Window:
    """Running loss sums between log lines and over the current epoch."""

    loss_sum: Tensor
    epoch_sum: Tensor
    start: int  # first step of the log window
    epoch_first: int  # first step summed into epoch_sum (a resume restarts the epoch mean)
    t0: float = field(default_factory=time.perf_counter)


def batches(s: Session) -> Prefetcher:
    """This rank's batches of the steps ``s.step .. plan.stop_step - 1``, in order, made
    ``cfg.prefetch`` steps ahead by a background thread (the same batches with 0): slices of
    the in-memory set in the order of :func:`epoch_permutation`, or read from the shards in
    the order of :class:`~deeplense_ssl.streaming.ChunkedOrder`."""
    p, info = s.plan, s.info
    make: Callable[[int], Tensor]
    if s.data is not None:
        make = MemoryBatches(
            s.data,
            lambda epoch: epoch_permutation(s.cfg.seed, epoch, len(p.train_idx)),
            p.steps_per_epoch,
            p.global_batch,
            info.rank,
            info.world_size,
            info.device,
        )
    else:
        assert s.source.stream is not None and s.source.layout is not None
        reader = StreamReader(
            s.source.stream, p.train_idx, s.cfg.seed, s.source.layout, p.steps_per_epoch,
            p.global_batch, info.rank, info.world_size,
        )  # fmt: skip
        make = StreamBatches(reader, info.device)
    return Prefetcher(make, range(s.step, p.stop_step), s.cfg.prefetch, info.device)


def _next_batch(s: Session, feed: Prefetcher) -> Tensor:
    """The next batch; a data error while streaming names the last checkpoint to resume."""
    try:
        return feed.next()
    except DataError as exc:
        if s.data is not None:
            raise
        saved = "no checkpoint was written yet"
        if s.saved_step is not None:
            saved = f"the run stopped at its last checkpoint (step {s.saved_step})"
        raise DataError(
            f"{exc} Training stopped at step {s.step}: {saved}; run the same command with "
            "--resume once the data are readable again."
        ) from exc


def _check_finite(s: Session, loss_sum: Tensor, first: int, last: int) -> float:
    value = float(all_reduce_mean(loss_sum, s.info))
    if not math.isfinite(value):
        ckpt = s.run_dir / CHECKPOINT_FILE
        kept = f"the last good checkpoint ({ckpt}) is kept" if ckpt.exists() else "none saved"
        # the inputs are finite (checked when loaded): the values overflowed inside the network
        scale = "check the data normalisation"
        if s.cfg.normalize == "none":
            scale = "scale the images (they were used as stored: --normalize minmax or zscore)"
        raise TrainingDivergedError(
            f"the training loss became {value} between steps {first} and {last}; {kept}. "
            f"Lower the learning rate (--lr), set --grad-clip, or {scale}."
        )
    return value


def _log_step(s: Session, w: _Window, epoch: int, lr_used: float) -> dict[str, Any]:
    mean_loss = _check_finite(s, w.loss_sum, w.start + 1, s.step) / (s.step - w.start)
    elapsed = time.perf_counter() - w.t0
    record = {
        "kind": "step",
        "step": s.step,
        "epoch": epoch,
        "loss": mean_loss,
        "lr": lr_used,
        "images_per_s": s.plan.global_batch * (s.step - w.start) / max(elapsed, 1e-9),
    }
    s.metrics.write(record)
    w.loss_sum.zero_()
    w.start, w.t0 = s.step, time.perf_counter()
    return record


def _monitors(s: Session, epoch: int) -> dict[str, Any]:
    """kNN accuracy and collapse measures of the exported backbone (rank 0, eval mode)."""
    backbone, device = s.method.export_backbone(), s.info.device
    kw: dict[str, Any] = {"batch_size": 2 * s.cfg.batch_size, "channels_last": s.cfg.channels_last}
    out: dict[str, Any] = {}
    if s.val_data is not None and s.bank_idx is not None:
        train_labels = s.labels[s.plan.train_idx]
        bank = first_rendering(_train_rows(s, s.bank_idx))
        val_labels = s.labels[s.plan.val_idx]
        out["knn_top1"] = knn_monitor(
            backbone, bank, train_labels[s.bank_idx], s.val_data, val_labels, device, **kw
        )
    if s.monitor_idx is not None and len(s.monitor_idx) >= 2:
        rows = first_rendering(_train_rows(s, s.monitor_idx))
        out.update(collapse_monitor(backbone, rows, device, **kw))
        if "collapse_warning" in out:
            tqdm.write(f"warning: epoch {epoch}: {out['collapse_warning']}", file=sys.stderr)
    return out


def _end_epoch(s: Session, w: _Window, epoch: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "epoch",
        "step": s.step,
        "epoch": epoch,
        "loss": float(all_reduce_mean(w.epoch_sum, s.info)) / (s.step - w.epoch_first),
    }
    if s.info.is_main:
        record.update(_monitors(s, epoch))
        s.method.train()
    s.metrics.write(record)
    w.epoch_sum.zero_()
    w.epoch_first = s.step
    return record


def train_loop(s: Session, progress: bool, on_step: OnStep | None) -> None:
    """Run optimiser steps until ``plan.stop_step``, logging, monitoring and checkpointing."""
    cfg, p, device = s.cfg, s.plan, s.info.device
    bar = tqdm(
        total=p.stop_step,
        initial=s.step,
        unit="step",
        disable=not (progress and s.info.is_main),
        dynamic_ncols=True,
    )
    zero = torch.zeros((), device=device)
    w = _Window(zero.clone(), zero.clone(), s.step, s.step)
    s.method.train()
    feed = batches(s)
    try:
        while s.step < p.stop_step:
            epoch = s.step // p.steps_per_epoch
            loss = training_step(
                s.net,
                s.method,
                _next_batch(s, feed),
                s.optimizer,
                scaler=s.scaler,
                amp=p.amp,
                grad_clip=cfg.grad_clip,
                channels_last=cfg.channels_last,
            )
            lr_used = s.optimizer.param_groups[0]["lr"]
            s.scheduler.step()
            s.step += 1
            s.method.after_step(s.step, p.total_steps)
            w.loss_sum += loss
            w.epoch_sum += loss
            bar.update(1)
            record = _after_step(s, w, epoch, lr_used, bar)
            if on_step is not None and s.info.is_main:
                on_step(s.step, record)
    finally:
        feed.close()
        bar.close()


def _after_step(s: Session, w: _Window, epoch: int, lr_used: float, bar: Any) -> dict[str, Any]:
    """Log, run the epoch monitors and checkpoint when due; returns the step's record."""
    p = s.plan
    epoch_end = s.step % p.steps_per_epoch == 0
    ckpt_due = epoch_end or s.step == p.stop_step or s.step % s.cfg.checkpoint_every_steps == 0
    record: dict[str, Any] = {}
    if ckpt_due or s.step % s.cfg.log_every_steps == 0:
        record = _log_step(s, w, epoch, lr_used)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    if epoch_end:
        record = {**record, "epoch_record": _end_epoch(s, w, epoch)}
    if ckpt_due:
        save(s, finished=s.step == p.stop_step)
    return record
