"""``deeplense-ssl evaluate``: a fine-tuned run + a test set -> ``metrics.json`` and scores.

:func:`evaluate` loads the run's model and the test images (with the run's normalisation and
image size unless the config overrides them), matches classes by name, scores every image once
(:func:`deeplense_ssl.inference.predict`) and computes every number with the pure functions of
:mod:`deeplense_ssl.metrics`. It writes the metrics file (default ``<run>/metrics.json``), the
per-image ``scores.npz`` (``probs``, ``labels``, ``sources``, ``embeddings``, ...) from which
anyone can recompute them, and ``examples.npz`` (a few images per class and their nearest test
neighbours) for the report. File names: :mod:`deeplense_ssl.runs`.

A test set larger than the memory budget (``data_mode``, ``max_memory_gb``), or several HDF5
shards, is streamed (:class:`deeplense_ssl.scoring.StreamedTestSet`): scored block by block,
resumable after a kill, holding only the outputs; the files are the same as in memory.

Evaluation mistakes of prior work that can be seen from the files (DOMAIN.md) are reported as
``warnings``: the test file is the fine-tuning file, or test images repeat a source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .attribution import attribution_maps
from .cleaning import fit_size
from .config import EvaluateConfig, config_to_dict
from .datasets import load_dataset
from .errors import CheckpointError, ConfigError, DataError
from .inference import ClassifierModel, load_finetuned, predict
from .metrics import (
    attribution_localisation,
    bootstrap_ci,
    classification_metrics,
    knn_predict,
    ood_auroc,
    roc_auc_report,
    roc_curves,
    scalar_metrics,
)
from .runs import (
    CONFIG_FILE,
    EVAL_METRICS_FILE,
    EVALUATE_KIND,
    MODEL_FILE,
    TRAIN_EMBEDDINGS_ARRAYS,
    TRAIN_EMBEDDINGS_FILE,
    json_text,
    npz_writer,
    partial_path,
    read_arrays,
    read_json,
    scores_path_for,
    text_writer,
    to_jsonable,
    write_together,
)
from .runtime import resolve_device, seed_everything
from .scoring import StreamedTestSet, file_identity
from .simulate import MASK_PARAMS, substructure_geometry, substructure_masks
from .streaming import CleanOptions, open_stream

N_EXAMPLES_PER_CLASS = 4
N_NEIGHBOURS = 6


# --------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------


class _LoadedTestSet:
    """A test set held in memory, read like :class:`~deeplense_ssl.scoring.StreamedTestSet`.

    Args:
        data: an :class:`~deeplense_ssl.datasets.ImageSet` (or anything with ``images``,
            ``labels``, ``class_names``, ``sources``).
        path: ``--data``.
    """

    info = None  # only a streamed evaluation reports how it streamed

    def __init__(self, data: Any, path: str) -> None:
        self.images = np.asarray(data.images, dtype=np.float32)
        self.labels, self.class_names = data.labels, data.class_names
        self.shape = self.images.shape
        self.meta = getattr(data, "meta", {}) or {}
        self.params = self.meta.get("params") or {}
        self.nan_report = getattr(data, "nan_report", None)
        self.data_files = [str(path)]
        n = len(self.images)
        named = list(data.sources) if len(data.sources) == n else [""] * n
        self.sources = np.asarray(named, dtype=str)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Images of test indices ``rows`` (any shape), ``(*rows.shape, C, H, W)``."""
        return self.images[rows]

    def score(
        self, model: ClassifierModel, *, batch_size: int, device: Any, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(N, K)`` and embeddings ``(N, D)`` of every image."""
        return predict(model, self.images, batch_size=batch_size, device=device, progress=progress)

    def finish(self) -> None:
        """Nothing to clean up."""

    def close(self) -> None:
        """Nothing to close."""


TestSet = _LoadedTestSet | StreamedTestSet


def _open_test_set(
    cfg: EvaluateConfig,
    spec: dict,
    dataset: Any,
    run_dir: Path,
    out: Path,
    device: torch.device,
    progress: bool,
) -> tuple[TestSet, str, int | None]:
    """The test set with the run's preprocessing (unless overridden), loaded or opened for
    streaming (``cfg.data_mode``); ``(test set, normalize, image_size)``."""
    normalize = spec["normalize"] if cfg.normalize == "auto" else cfg.normalize
    image_size = spec.get("image_size") if cfg.image_size is None else cfg.image_size
    stats = spec.get("norm_stats") if normalize == spec["normalize"] else None
    if dataset is None:
        options = CleanOptions(
            nan_policy=cfg.nan_policy,
            normalize=normalize,
            image_size=image_size,
            allow_pickle=cfg.allow_pickle,
        )
        shards, budget = open_stream(
            cfg.data, cfg.data_mode, cfg.max_memory_gb, options, "evaluate"
        )
        if shards is not None:
            try:
                if normalize == "zscore-dataset" and stats is None:
                    raise _pending_error(cfg, run_dir)
                identity = {
                    "model": file_identity(run_dir / MODEL_FILE),
                    "device": str(device),
                    "batch_size": cfg.batch_size,
                }
                test = StreamedTestSet(shards, options, stats, partial_path(out), identity, budget)
            except BaseException:
                shards.close()
                raise
            return test, normalize, image_size
        dataset = load_dataset(
            cfg.data,
            nan_policy=cfg.nan_policy,
            normalize=normalize,
            image_size=image_size,
            allow_pickle=cfg.allow_pickle,
            norm_stats=stats,
            progress=progress,
        )
    elif cfg.data_mode == "stream":
        raise ConfigError(
            "data_mode='stream' reads --data from files; a dataset passed in memory is "
            "evaluated in memory (data_mode 'auto' or 'in-memory')."
        )
    if getattr(dataset, "normalization_pending", False):
        raise _pending_error(cfg, run_dir)
    return _LoadedTestSet(dataset, cfg.data), normalize, image_size


def _pending_error(cfg: EvaluateConfig, run_dir: Path) -> DataError:
    return DataError(
        "normalize='zscore-dataset' needs statistics from the training data, and the run "
        f"{run_dir} has none; evaluate with the run's own normalisation (--normalize auto).",
        cfg.data,
    )


def _check_images(shape: tuple[int, ...], spec: dict, run_dir: Path, data: str) -> None:
    """The test images (``shape`` ``(N, C, H, W)``) must have the channels and size the model
    was trained on."""
    if len(shape) != 4 or shape[0] == 0:
        raise DataError(f"no images to evaluate (shape {shape}).", data)
    if shape[1] != spec["in_chans"]:
        raise DataError(
            f"test images have {shape[1]} channel(s) but the model in {run_dir} was "
            f"trained on {spec['in_chans']}; evaluate on data with the same bands.",
            data,
        )
    hw = spec.get("input_hw")
    if hw is not None and tuple(shape[2:]) != tuple(hw):
        raise DataError(
            f"test images are {shape[2]}x{shape[3]} px but the model in {run_dir} "
            f"was trained on {hw[0]}x{hw[1]} px; pass --image-size {hw[0]} (centre crop/resize).",
            data,
        )


def _map_labels(
    data: Any, model_classes: list[str], ood_classes: Sequence[str], data_path: str
) -> tuple[np.ndarray, np.ndarray]:
    """Map dataset labels to model label indices by class name; return (labels, is_ood)."""
    names = list(data.class_names)
    unknown_ood = sorted(set(ood_classes) - set(names))
    if unknown_ood:
        raise DataError(
            f"--ood-classes {', '.join(unknown_ood)} are not classes of this test set "
            f"(it has {', '.join(names)}).",
            data_path,
        )
    clash = sorted(set(ood_classes) & set(model_classes))
    if clash:
        raise DataError(
            f"--ood-classes {', '.join(clash)} are classes the model was trained on; name only "
            "held-out classes.",
            data_path,
        )
    present = {names[i] for i in np.unique(data.labels)}
    unseen = sorted(present - set(model_classes) - set(ood_classes))
    if unseen:
        raise DataError(
            f"test set has class(es) {', '.join(unseen)} that the model was never trained on "
            f"(model classes: {', '.join(model_classes)}). Remove them, or pass "
            f"--ood-classes {','.join(unseen)} to score them as out-of-distribution.",
            data_path,
        )
    lut = np.array([model_classes.index(n) if n in model_classes else -1 for n in names])
    mapped = lut[np.asarray(data.labels, dtype=np.int64)]
    return mapped, mapped < 0


def _data_warnings(run_dir: Path, data_files: list[str], sources: np.ndarray) -> list[str]:
    """Evaluation mistakes of prior work that can be seen from the files (DOMAIN.md)."""
    out = []
    try:
        ft = read_json(run_dir / CONFIG_FILE, "run config")["config"]["data"]
        same = [d for d in data_files if ft and Path(ft).resolve() == Path(d).resolve()]
        for data in same:
            out.append(
                f"the test data {data} is the file the model was fine-tuned on; the numbers "
                "are not a held-out evaluation."
            )
    except (CheckpointError, KeyError, TypeError):
        pass
    named = [s for s in sources.tolist() if s]
    n_dup = len(named) - len(set(named))
    if n_dup:
        out.append(
            f"{n_dup} test image(s) repeat a source already in the test set (drawn with "
            "replacement?); duplicates shrink the intervals artificially."
        )
    return out


# --------------------------------------------------------------------------------------------
# Metrics beyond the scores: kNN on the training embeddings, OOD
# --------------------------------------------------------------------------------------------


def _knn_metrics(
    cfg: EvaluateConfig, run_dir: Path, emb: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, Any] | None:
    """Weighted kNN accuracy of the test embeddings against the run's labelled training
    embeddings (None when the run has no ``train_embeddings.npz``).

    Raises:
        CheckpointError: a damaged ``train_embeddings.npz`` or one not from this run.
    """
    train_file = run_dir / TRAIN_EMBEDDINGS_FILE
    if not train_file.exists():
        return None
    z = read_arrays(
        train_file, "labelled training embeddings", TRAIN_EMBEDDINGS_ARRAYS, n_classes=n_classes
    )
    t_emb, t_lab = z["embeddings"], z["labels"]
    if len(t_emb) == 0 or t_emb.shape[1] != emb.shape[1]:
        raise CheckpointError(
            f"{train_file}: holds {t_emb.shape[0]} embedding(s) of width {t_emb.shape[1]}, but "
            f"the model of {run_dir} embeds to width {emb.shape[1]}; the file is not from this "
            "run: re-run `deeplense-ssl finetune`."
        )
    knn_pred, _ = knn_predict(
        t_emb, t_lab, emb, cfg.knn_k, cfg.knn_temperature, num_classes=n_classes
    )
    return {
        "k": int(min(cfg.knn_k, len(t_emb))),
        "temperature": float(cfg.knn_temperature),
        "n_train": int(len(t_emb)),
        "accuracy": float((knn_pred.numpy() == labels).mean()),
    }


def _ood_metrics(
    dataset: Any, probs_in: np.ndarray, probs_ood: np.ndarray, is_ood: np.ndarray
) -> dict[str, Any] | None:
    """Max-softmax OOD AUROC of the held-out classes (None without OOD images)."""
    if not is_ood.any():
        return None
    out = ood_auroc(probs_in, probs_ood)
    out["classes"] = sorted(
        {dataset.class_names[i] for i in np.unique(np.asarray(dataset.labels)[is_ood])}
    )
    return out


def _score_metrics(
    cfg: EvaluateConfig, labels: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """ROC-AUC, classification metrics, bootstrap intervals and ROC curves of the scores."""
    out: dict[str, Any] = {"roc_auc": roc_auc_report(labels, probs, class_names)}
    out.update(classification_metrics(labels, probs, class_names))
    out["ci"] = bootstrap_ci(
        labels,
        probs,
        lambda y, p: scalar_metrics(y, p, class_names),
        n_bootstrap=cfg.n_bootstrap,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
    )
    out["ci_method"] = {
        "method": "stratified percentile bootstrap over test images",
        "n_resamples": int(cfg.n_bootstrap),
        "level": float(cfg.ci_level),
        "seed": int(cfg.seed),
    }
    out["roc_curves"] = roc_curves(labels, probs, class_names)
    return out


# --------------------------------------------------------------------------------------------
# Examples for the report
# --------------------------------------------------------------------------------------------


def _localisation(
    cfg: EvaluateConfig,
    model: torch.nn.Module,
    test: TestSet,
    keep: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
) -> dict[str, Any] | None:
    """Attribution localisation (:func:`deeplense_ssl.metrics.attribution_localisation`) on up
    to ``cfg.localisation_images`` seeded test images per class that have substructure in the
    field, explaining the true class logit; ``None`` when off or when the test file does not
    record where its substructure is (only files simulated by this package do)."""
    geometry = substructure_geometry(test.meta.get("provenance"))
    params: Any = test.params
    if cfg.localisation_images == 0 or geometry is None or not set(MASK_PARAMS) & set(params):
        return None
    rows = np.flatnonzero(keep)  # test-image index -> row of the file's params
    rng = np.random.default_rng(cfg.seed)
    out: dict[str, Any] = {
        "method": cfg.localisation_method,
        "radius_fwhm": cfg.localisation_radius_fwhm,
        "radius_arcsec": cfg.localisation_radius_fwhm * geometry[2],
        "per_class": {},
    }
    all_maps, all_light, all_masks = [], [], []
    for c, name in enumerate(class_names):
        size = (test.shape[-1], str(test.meta.get("fit_mode", "auto")))
        idx, masks = _masked_sample(labels, c, rows, params, geometry, cfg, rng, size)
        if not len(idx):
            continue
        images = test.take(rows[idx])
        maps = attribution_maps(model, images, labels[idx], [cfg.localisation_method])
        light = np.abs(np.asarray(images, dtype=np.float64)).sum(axis=1)  # (M, H, W)
        out["per_class"][name] = _localisation_scores(maps[cfg.localisation_method], light, masks)
        all_maps.append(maps[cfg.localisation_method])
        all_light.append(light)
        all_masks.append(masks)
    if not all_maps:
        return None
    maps_all, light_all = np.concatenate(all_maps), np.concatenate(all_light)
    out["all"] = _localisation_scores(maps_all, light_all, np.concatenate(all_masks))
    return out


def _localisation_scores(
    maps: np.ndarray, light: np.ndarray, masks: np.ndarray
) -> dict[str, float | None]:
    """:func:`attribution_localisation` of ``maps`` plus the same share for the images' own
    light (``light_fraction``, ``ratio_to_light``): attribution that simply follows the bright
    ring puts about the light's share on the masks, since subhalos sit near the ring."""
    scores: dict[str, float | None] = dict(attribution_localisation(maps, masks))
    light_share = attribution_localisation(light, masks)["fraction"]
    scores["light_fraction"] = light_share
    fraction = scores["fraction"]
    ratio = fraction / light_share if fraction is not None and light_share > 0 else None
    scores["ratio_to_light"] = ratio
    return scores


def _masked_sample(
    labels: np.ndarray,
    c: int,
    rows: np.ndarray,
    params: dict[str, np.ndarray],
    geometry: tuple[int, float, float],
    cfg: EvaluateConfig,
    rng: np.random.Generator,
    size: tuple[int, str],
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``cfg.localisation_images`` test indices of class ``c`` whose scene has
    substructure in the field (seeded, in random order) and their masks ``(M, S, S)`` bool,
    brought to the model's side ``S`` the way the images were (``size`` = ``(S, fit mode)``,
    :func:`fit_size`)."""
    picked, masks = [], []
    for i in rng.permutation(np.flatnonzero(labels == c)):
        mask = substructure_masks(params, rows[i : i + 1], geometry, cfg.localisation_radius_fwhm)
        if mask[0] is not None:
            picked.append(i)
            masks.append(mask[0])
        if len(picked) == cfg.localisation_images:
            break
    if not picked:
        return np.zeros(0, np.int64), np.zeros((0, size[0], size[0]), bool)
    stack = np.stack(masks).astype(np.float32)[:, None]
    return np.asarray(picked), fit_size(stack, size[0], size[1])[:, 0] > 0.5


def _neighbours(emb: np.ndarray, query_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` nearest other test images of each query."""
    e = torch.nn.functional.normalize(torch.as_tensor(emb, dtype=torch.float32), dim=1)
    sim = e[query_idx] @ e.T
    sim[torch.arange(len(query_idx)), torch.as_tensor(query_idx)] = -float("inf")
    k = min(k, len(e) - 1)
    s, i = sim.topk(k, dim=1)
    return i.numpy(), s.numpy()


def _example_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` seeded random test indices per class, sorted within each class."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------------
# The evaluate command
# --------------------------------------------------------------------------------------------


def _describe(
    cfg: EvaluateConfig,
    run_dir: Path,
    test: TestSet,
    labels: np.ndarray,
    class_names: list[str],
    preprocessing: tuple[str, int | None],
) -> dict[str, Any]:
    """The head of ``metrics.json``: what was evaluated, on what, prepared how.

    Args:
        labels: (M,) class indices of the in-distribution test images;
        preprocessing: ``(normalize, image_size)`` applied to the test images.
    """
    normalize, image_size = preprocessing
    return {
        "kind": EVALUATE_KIND,
        "deeplense_ssl_version": __version__,
        "finetune_run": str(run_dir.resolve()),
        "data": str(cfg.data),
        "class_names": class_names,
        "n_images": int(len(labels)),
        "class_counts": {n: int((labels == k).sum()) for k, n in enumerate(class_names)},
        "normalize": normalize,
        "image_size": image_size,
        "input_hw": list(test.shape[2:]),
        "nan_report": to_jsonable(test.nan_report),
    }


def evaluate(cfg: EvaluateConfig, dataset: Any = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a fine-tuned run on a test set and write ``metrics.json`` + ``scores.npz``.

    The metrics file, ``scores.npz`` and ``examples.npz`` are published together, after every
    number is computed (:func:`deeplense_ssl.runs.write_together`): a failed or killed
    evaluation leaves the previous three files, or none, never a mix.

    The test images are read with the run's normalisation and image size (unless the config
    overrides them), classes are matched by name, images of ``cfg.ood_classes`` are scored as
    out-of-distribution and every other unseen class is an error.

    ``cfg.data_mode`` ``stream`` (or ``auto`` when the cleaned set exceeds the memory budget,
    or ``cfg.data`` names several shards) scores the set block by block without loading it
    (:mod:`deeplense_ssl.scoring`): committed blocks go to ``<out>.partial/``, a killed run
    continues from them, and the files written equal those of the in-memory pass.

    Args:
        cfg: the resolved evaluate config (``checkpoint`` is a finetune run folder).
        dataset: an already loaded :class:`deeplense_ssl.datasets.ImageSet` (skips reading
            ``cfg.data``; it must already be normalised like the run's training data).
        progress: show a progress bar while scoring.

    Returns:
        The metrics dict that was written to ``cfg.out`` (default
        ``<checkpoint>/metrics.json``); its ``"metrics_file"`` entry is that path.

    Raises:
        CheckpointError: the run folder has no usable ``model.pt``, or a damaged
            ``train_embeddings.npz``.
        OutputError: an output file cannot be written (full disk, read-only folder).
        DataError: channel count / image size / classes do not match the model; a missing,
            truncated or mismatched shard (before anything is scored).
        ConfigError: several files in memory, ``nan_policy="drop"`` when streaming.
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else run_dir / EVAL_METRICS_FILE
    model, spec = load_finetuned(run_dir, map_location="cpu")
    model.to(device).eval()
    test, normalize, image_size = _open_test_set(cfg, spec, dataset, run_dir, out, device, progress)
    try:
        _check_images(test.shape, spec, run_dir, cfg.data)
        class_names = list(spec["class_names"])
        labels_all, is_ood = _map_labels(test, class_names, cfg.ood_classes, str(cfg.data))
        if not (~is_ood).any():
            raise DataError("no test image belongs to a class the model was trained on.", cfg.data)
        probs_all, emb_all = test.score(
            model, batch_size=cfg.batch_size, device=device, progress=progress
        )
        keep = ~is_ood
        probs, emb, labels = probs_all[keep], emb_all[keep], labels_all[keep]
        sources_all = test.sources
        metrics = _describe(cfg, run_dir, test, labels, class_names, (normalize, image_size))
        metrics["warnings"] = _data_warnings(run_dir, test.data_files, sources_all[keep])
        metrics.update(_score_metrics(cfg, labels, probs, class_names))
        metrics["knn"] = _knn_metrics(cfg, run_dir, emb, labels, len(class_names))
        metrics["ood"] = _ood_metrics(test, probs, probs_all[is_ood], is_ood)
        metrics["localisation"] = _localisation(cfg, model, test, keep, labels, class_names)
        if test.info is not None:
            metrics["streaming"] = test.info
        scores = _scores_arrays(probs_all, emb, labels, sources_all, is_ood, class_names)
        examples = _examples_arrays(test, keep, sources_all[keep], labels, emb, class_names, cfg)
        _publish(out, metrics, config_to_dict(cfg), scores, examples)
        test.finish()
    finally:
        test.close()
    return metrics


def _publish(
    out: Path, metrics: dict[str, Any], config: dict[str, Any], scores: dict, examples: dict
) -> None:
    """Complete ``metrics`` (companion file names, config, its own path) and write the three
    files together, the metrics file last (:func:`deeplense_ssl.runs.write_together`)."""
    scores_file = scores_path_for(out, "scores")
    examples_file = scores_path_for(out, "examples")
    metrics["scores_file"] = scores_file.name
    metrics["examples_file"] = examples_file.name
    metrics["config"] = config
    metrics["metrics_file"] = str(out)
    write_together(
        (out, text_writer(json_text(metrics, indent=1))),
        (scores_file, npz_writer(scores)),
        (examples_file, npz_writer(examples)),
    )


def _scores_arrays(
    probs_all: np.ndarray,
    emb: np.ndarray,
    labels: np.ndarray,
    sources_all: np.ndarray,
    is_ood: np.ndarray,
    class_names: list[str],
) -> dict[str, np.ndarray]:
    """``scores.npz``: per-image probabilities, labels, sources and embeddings of the
    in-distribution test images (``emb``, ``labels``), and the scores of the OOD ones."""
    return {
        "probs": probs_all[~is_ood].astype(np.float32),
        "labels": labels.astype(np.int64),
        "sources": sources_all[~is_ood],
        "embeddings": emb.astype(np.float32),
        "class_names": np.asarray(class_names, dtype=str),
        "ood_probs": probs_all[is_ood].astype(np.float32),
        "ood_sources": sources_all[is_ood],
    }


def _examples_arrays(
    test: TestSet,
    keep: np.ndarray,
    sources: np.ndarray,
    labels: np.ndarray,
    emb: np.ndarray,
    class_names: list[str],
    cfg: EvaluateConfig,
) -> dict[str, np.ndarray]:
    """``examples.npz``: a few in-distribution test images per class (``keep``: (N,) bool, the
    in-distribution images; ``sources``, ``labels``, ``emb``: theirs) and their nearest test
    neighbours, read by index (:meth:`TestSet.take`)."""
    ex_idx = _example_indices(labels, per_class=N_EXAMPLES_PER_CLASS, seed=cfg.seed)
    nb_idx, nb_sim = _neighbours(emb, ex_idx, k=N_NEIGHBOURS)
    rows = np.flatnonzero(keep)  # in-distribution index -> test index
    return {
        "images": test.take(rows[ex_idx]),
        "labels": labels[ex_idx],
        "sources": sources[ex_idx],
        "test_index": ex_idx,
        "neighbor_images": test.take(rows[nb_idx]),
        "neighbor_labels": labels[nb_idx],
        "neighbor_similarity": nb_sim.astype(np.float32),
        "class_names": np.asarray(class_names, dtype=str),
    }
