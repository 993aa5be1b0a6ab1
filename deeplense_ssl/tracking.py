"""Experiment tracking: what a run writes to ``metrics.jsonl``, mirrored to TensorBoard or MLflow.

``log`` (:data:`TRACKERS`, ``--log``) chooses the tracker of ``pretrain`` and ``finetune``:

* ``none`` (the default): nothing is written and nothing needs installing.
* ``tensorboard``: event files (``torch.utils.tensorboard.SummaryWriter``) in the folder
  ``log_uri``, by default ``<run>/tensorboard`` (``tensorboard --logdir runs/`` shows every run).
* ``mlflow``: one MLflow run (``MlflowClient``, experiment :data:`EXPERIMENT`, run name = the
  run folder's name) in the tracking store ``log_uri``, by default the file store
  ``file:<run>/mlruns``. MLflow 3 gates file stores behind ``MLFLOW_ALLOW_FILE_STORE``: for a
  ``file:`` store it is set to ``true`` in this process unless it is set already.

Both need the extra ``track`` (``pip install "deeplense-ssl[track]"``); they are imported only
when chosen.

What is sent: every record written to ``metrics.jsonl`` (:class:`Tracker.log_metrics` at the
record's ``step``): its numeric entries as scalars named ``<kind>/<key>`` when the record has a
``kind`` (pretraining: ``step/loss``, ``step/lr``, ``epoch/loss``, ``epoch/knn_top1``,
``epoch/rankme``, ``epoch/emb_std_min``...) and ``<key>`` otherwise (fine-tuning epochs:
``train_loss``, ``lr``, ``val_auc_macro``...); text entries (a collapse warning) are not sent.
The hyperparameters (the run's ``config.json`` content: config, resolved values) are sent once
per session under dotted names (``config.lr``, ``resolved.global_batch_size``; TensorBoard: a
table in the Text tab), and the final metrics as ``final/<name>`` at the last step.

Where the run records its tracker: ``<run>/tracking.json`` (:data:`TRACKING_FILE`: ``log``,
``log_uri``, and MLflow's ``run_id``).

Resume: a resumed pretraining continues the same tracker run. TensorBoard writes to the same
folder with ``purge_step`` = the checkpoint's step + 1, so the records a killed session wrote
after its last checkpoint are dropped from the view, which then equals ``metrics.jsonl``. MLflow
reuses the ``run_id`` of ``tracking.json`` and skips, per metric, the steps the run already
holds (MLflow cannot delete values: for the few steps between the last checkpoint and the kill
the killed session's values stay; on CPU they are bitwise those of the resumed session).
MLflow parameters cannot change: a value changed by the resume (``epochs``, ``max_steps``) is
recorded as the tag ``resume.<name>``.

Failures: a tracker that cannot be opened (a missing extra, a bad ``log_uri``) is a
:class:`~deeplense_ssl.errors.DeepLenseError` before training starts. A tracker call that fails
later (a full disk, a tracking server gone) warns once (``RuntimeWarning``) and turns tracking
off for the rest of the run: training goes on, and ``metrics.jsonl`` keeps every record.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, DeepLenseError, MissingDependencyError
from .io import write_text_atomic
from .runs import MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE

TRACKERS: tuple[str, ...] = ("none", "tensorboard", "mlflow")
"""The ``log`` choices."""


EXPERIMENT = "deeplense-ssl"
"""The MLflow experiment the runs go to."""

EXTRA = 'pip install "deeplense-ssl[track]"'
_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # tracker -> module it needs
_PARAM_CHARS = 6000  # MLflow's longest parameter value
_PARAM_BATCH = 100  # MLflow log_batch: at most 100 parameters per call


# --------------------------------------------------------------------------------------------
# What is sent
# --------------------------------------------------------------------------------------------


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record, named as the trackers show them.

    Args:
        record: one ``metrics.jsonl`` record (``step`` and ``kind`` are not sent as values).

    Returns:
        ``{"<kind>/<key>": value}`` (``{"<key>": value}`` without a ``kind``); booleans become
        0/1, text and ``None`` entries are left out.
    """
    kind = record.get("kind")
    prefix = f"{kind}/" if isinstance(kind, str) else ""
    return {
        prefix + str(key): float(value)
        for key, value in record.items()
        if key not in ("kind", "step") and isinstance(value, numbers.Real)
    }


def final_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The last value of every scalar of ``records``, named ``final/<name>``."""
    out: dict[str, float] = {}
    for record in records:
        out.update({f"final/{k}": v for k, v in scalar_metrics(record).items()})
    return out


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings flattened to dotted names; values kept if bool, int, float or str, else
    as JSON text (lists, ``None``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


# --------------------------------------------------------------------------------------------
# Trackers
# --------------------------------------------------------------------------------------------


class Tracker:
    """The tracker interface, and the ``none`` tracker: accepts everything, writes nothing.

    A tracker is a context manager: leaving the block closes it (as failed when an exception
    leaves it).
    """

    kind = "none"

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the hyperparameters (nested mappings flattened, :func:`flat_params`)."""

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record the scalars of one metrics record (:func:`scalar_metrics`) at ``step``."""

    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed``: the run ended with an exception."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)


class TensorBoardTracker(Tracker):
    """Scalars and a parameter table in TensorBoard event files.

    Args:
        log_dir: the event folder (created if needed).
        start_step: the step the run continues from (0: a new run); events after it that a
            killed session wrote are purged (``purge_step = start_step + 1``).

    Raises:
        MissingDependencyError: tensorboard is not installed.
    """

    kind = "tensorboard"

    def __init__(self, log_dir: Path, start_step: int = 0) -> None:
        require_tracker(self.kind)
        # torch's writer module imports tensorboard when it is imported: load it only now
        writer_module = importlib.import_module("torch.utils.tensorboard")
        self.log_dir, self.start_step = Path(log_dir), start_step
        self._writer = writer_module.SummaryWriter(str(log_dir), purge_step=start_step + 1)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """A Markdown table ``name | value`` under the text tag ``config``."""
        rows = [f"| {k} | {str(v).replace('|', '/')} |" for k, v in flat_params(params).items()]
        table = "\n".join(["| name | value |", "|---|---|", *rows])
        self._writer.add_text("config", table, global_step=self.start_step)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One scalar event per entry (:func:`scalar_metrics`)."""
        for tag, value in scalar_metrics(metrics).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self, failed: bool = False) -> None:
        """Flush the event file and close it."""
        self._writer.close()


class MLflowTracker(Tracker):
    """Metrics and parameters of one MLflow run (``MlflowClient``, no global state).

    Args:
        uri: the tracking URI (``file:...`` for a local file store).
        run_name: the MLflow run name (the run folder's name).
        run_id: an MLflow run to continue (a resume); a new run when None or not in the store.

    Raises:
        MissingDependencyError: mlflow (``mlflow-skinny``) is not installed.
    """

    kind = "mlflow"

    def __init__(self, uri: str, run_name: str, run_id: str | None = None) -> None:
        require_tracker(self.kind)
        if uri.startswith("file:"):  # MLflow 3 refuses file stores without this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        self._client = MlflowClient(tracking_uri=uri)
        self._done: dict[str, int] = {}  # metric -> last step the run holds (a continued run)
        self._params: dict[str, str] = {}
        if run_id is not None and self._continue(run_id):
            self.run_id = run_id
            return
        experiment = self._client.get_experiment_by_name(EXPERIMENT)
        eid = experiment.experiment_id if experiment else self._client.create_experiment(EXPERIMENT)
        self.run_id = self._client.create_run(eid, run_name=run_name).info.run_id

    def _continue(self, run_id: str) -> bool:
        """Reopen ``run_id``; note its parameters and each metric's last step."""
        try:
            run = self._client.get_run(run_id)
        except Exception:  # noqa: BLE001 (any store error: not there, start a new run)
            return False
        self._params = dict(run.data.params)
        for key in run.data.metrics:
            history = self._client.get_metric_history(run_id, key)
            self._done[key] = max((m.step for m in history), default=-1)
        self._client.update_run(run_id, status="RUNNING")
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        """New names become parameters; values a resume changed become ``resume.<name>`` tags."""
        flat = {k: str(v)[:_PARAM_CHARS] for k, v in flat_params(params).items()}
        new = [self._param(k, v) for k, v in flat.items() if k not in self._params]
        for start in range(0, len(new), _PARAM_BATCH):
            self._client.log_batch(self.run_id, params=new[start : start + _PARAM_BATCH])
        for k, v in flat.items():
            if k in self._params and self._params[k] != v:
                self._client.set_tag(self.run_id, f"resume.{k}", v)
        self._params.update(flat)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One batch of the record's scalars; steps the run already holds are skipped."""
        now = int(time.time() * 1000)
        values = [
            self._metric(key, value, now, step)
            for key, value in scalar_metrics(metrics).items()
            if step > self._done.get(key, -1)
        ]
        if values:
            self._client.log_batch(self.run_id, metrics=values)

    def close(self, failed: bool = False) -> None:
        """Mark the run ``FINISHED`` (``FAILED`` after an exception)."""
        self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class _Guarded(Tracker):
    """Forwards to a tracker; its first failure warns once and turns tracking off."""

    def __init__(self, inner: Tracker) -> None:
        self.inner: Tracker | None = inner
        self.kind = inner.kind

    def _call(self, what: str, fn: Callable[[Tracker], None]) -> None:
        if self.inner is None:
            return
        try:
            fn(self.inner)
        except Exception as exc:  # noqa: BLE001 (a tracker must never stop training)
            self.inner = None
            warnings.warn(
                f"{self.kind} tracking failed in {what} ({type(exc).__name__}: {exc}); it is off "
                "for the rest of this run (training goes on; metrics.jsonl has every record).",
                RuntimeWarning,
                stacklevel=3,
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", lambda t: t.log_params(params))

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._call(f"log_metrics (step {step})", lambda t: t.log_metrics(step, metrics))

    def close(self, failed: bool = False) -> None:
        self._call("close", lambda t: t.close(failed))
        self.inner = None


# --------------------------------------------------------------------------------------------
# Opening a run's tracker
# --------------------------------------------------------------------------------------------


def require_tracker(kind: str) -> None:
    """Check that the package tracker ``kind`` needs is installed (without importing it).

    Raises:
        ConfigError: ``kind`` is not one of :data:`TRACKERS`.
        MissingDependencyError: its package is missing (names the ``track`` extra).
    """
    if kind not in TRACKERS:
        raise ConfigError(f"log={kind!r} is not one of {', '.join(TRACKERS)}.")
    module = _MODULES.get(kind)
    if module is not None and importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"--log {kind} needs the {module} package, which is not installed: {EXTRA} "
            "(or use --log none)."
        )


def open_tracker(
    kind: str,
    run_dir: str | Path,
    *,
    uri: str | None = None,
    name: str | None = None,
    start_step: int = 0,
) -> Tracker:
    """The tracker ``kind`` of the run in ``run_dir``; records it in ``<run_dir>/tracking.json``.

    Args:
        kind: one of :data:`TRACKERS`.
        run_dir: the folder the run writes (its ``tensorboard`` / ``mlruns`` by default).
        uri: TensorBoard: the event folder; MLflow: the tracking URI (None: in ``run_dir``).
        name: the run's name (MLflow run name; default: ``run_dir``'s name).
        start_step: the step a resumed run continues from (0: a new run). A resumed run
            continues the tracker run recorded in ``tracking.json`` when the tracker and
            ``uri`` are the same.

    Returns:
        A :class:`Tracker` whose failures warn once and turn it off; ``none``: writes nothing.

    Raises:
        ConfigError: an unknown ``kind``, or the tracker cannot be opened at ``uri``.
        MissingDependencyError: the ``track`` extra is missing.
    """
    require_tracker(kind)
    if kind == "none":
        return Tracker()
    run_dir = Path(run_dir)
    record: dict[str, Any] = {"log": kind, "log_uri": uri}
    try:
        if kind == "tensorboard":
            tracker: Tracker = TensorBoardTracker(
                Path(uri or run_dir / TENSORBOARD_DIR), start_step
            )
        else:
            store = uri or (run_dir / MLFLOW_DIR).absolute().as_uri()
            previous = _previous(run_dir) if start_step > 0 else {}
            same = previous.get("log") == kind and previous.get("log_uri") == uri
            run_id = previous.get("run_id") if same else None
            mlflow_tracker = MLflowTracker(store, name or run_dir.name, run_id)
            record["run_id"] = mlflow_tracker.run_id
            tracker = mlflow_tracker
    except DeepLenseError:
        raise
    except Exception as exc:  # noqa: BLE001 (any library error: one clear message)
        where = uri or run_dir
        raise ConfigError(
            f"cannot open {kind} tracking at {where} ({type(exc).__name__}: {exc}); check "
            "--log-uri, or use --log none."
        ) from exc
    write_text_atomic(run_dir / TRACKING_FILE, json.dumps(record, indent=2) + "\n")
    return _Guarded(tracker)


def _previous(run_dir: Path) -> dict[str, Any]:
    """The ``tracking.json`` of ``run_dir`` (empty when absent or unreadable)."""
    try:
        data = json.loads((run_dir / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
