"""``deeplense-ssl export``: every format loads in its target library with deeplense_ssl blocked
(a subprocess runs the model card's own loading snippet) and reproduces our embeddings / logits;
bad input is one line, exit 1, and leaves no file behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_finetune import fake_pretrain_run, write_toy_h5
from safetensors.torch import load_file

from deeplense_ssl import export as export_mod
from deeplense_ssl.checkpoint import load_pretrained_backbone
from deeplense_ssl.config import (
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    PretrainConfig,
    config_from_sources,
)
from deeplense_ssl.errors import ConfigError
from deeplense_ssl.evaluation import evaluate
from deeplense_ssl.export import SUFFIXES, card_path, export_run
from deeplense_ssl.finetuning import finetune
from deeplense_ssl.inference import load_finetuned
from deeplense_ssl.training import pretrain
from deeplense_ssl_cli.main import main

# run -> the formats exported from it (ONNX, the slow one, for one run of each kind)
CASES = {
    "pre_cifar": ("safetensors", "torchvision", "timm", "onnx"),
    "ft_mlp": ("safetensors", "torchvision", "timm", "onnx"),
    "pre_imagenet": ("safetensors", "torchvision", "timm"),
    "ft_linear": ("safetensors", "timm"),
}
PARAMS = [(run, fmt) for run, fmts in CASES.items() for fmt in fmts]

# Runs the card's snippet in a fresh interpreter where importing deeplense_ssl fails.
LOADER = r"""
import json, os, sys
sys.modules["deeplense_ssl"] = None
sys.modules["deeplense_ssl_cli"] = None
import numpy as np
cases, results = json.loads(open(sys.argv[1]).read()), {}
for case in cases:
    os.chdir(case["folder"])
    ns = {"__name__": "card_snippet"}
    exec(compile(case["code"], case["name"], "exec"), ns)
    x = np.load(case["inputs"])
    meta = None
    if case["file"].endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(case["file"], "pt") as fh:
            meta = fh.metadata()
    elif case["file"].endswith(".onnx"):
        import onnxruntime
        s = onnxruntime.InferenceSession(case["file"], providers=["CPUExecutionProvider"])
        meta = s.get_modelmeta().custom_metadata_map
    results[case["name"]] = {
        "y": ns["infer"](x).tolist(), "y1": ns["infer"](x[:1]).tolist(), "meta": meta
    }
leaked = sorted(m for m, v in sys.modules.items() if m.startswith("deeplense_ssl") and v)
with open(sys.argv[2], "w") as fh:
    json.dump({"cases": results, "leaked": leaked}, fh)
"""


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def snippet(card: Path) -> str:
    found = re.search(r"```python\n(.*?)```", card.read_text(), re.DOTALL)
    assert found, card
    return found.group(1)


def _finetune(data: Path, checkpoint: Path, out: Path, head: str) -> Path:
    values = {"data": data, "checkpoint": checkpoint, "out": out, "head": head}
    values.update(epochs=1, min_steps=0, batch_size=8, mlp_hidden_dim=32, device="cpu")
    cfg = config_from_sources(FinetuneConfig, None, {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in values.items()})  # fmt: skip
    return finetune(cfg, progress=False)


@pytest.fixture(scope="module")
def runs(module_tmp) -> dict[str, Path]:
    """A real 1-step pretrain (cifar stem, 2 bands) and an evaluated MLP finetune on it; a fake
    finished pretrain (imagenet stem, 3 bands) and a linear finetune on it."""
    root = module_tmp("runs")
    write_toy_h5(root / "d2.h5", n_per_class=6, chans=2)
    write_toy_h5(root / "t2.h5", n_per_class=4, chans=2, seed=1)
    write_toy_h5(root / "d3.h5", n_per_class=4, chans=3)
    pre = {"data": str(root / "d2.h5"), "out": str(root / "pre_cifar"), "max_steps": 1}
    pre.update(batch_size=8, stem="cifar", device="cpu", knn_monitor=True, knn_val_fraction=0.3)
    pretrain(config_from_sources(PretrainConfig, None, {**pre, "collapse_monitor_size": 8}))
    _finetune(root / "d2.h5", root / "pre_cifar", root / "ft_mlp", "mlp")
    ecfg = {"checkpoint": str(root / "ft_mlp"), "data": str(root / "t2.h5"), "knn_k": 3}
    evaluate(config_from_sources(EvaluateConfig, None, {**ecfg, "n_bootstrap": 20}), None, False)
    fake_pretrain_run(root / "pre_imagenet", in_chans=3, stem="imagenet")
    _finetune(root / "d3.h5", root / "pre_imagenet", root / "ft_linear", "linear")
    return {name: root / name for name in CASES}


def our_outputs(run: Path, x: np.ndarray) -> np.ndarray:
    """Embeddings / logits of our own loaders (the reference)."""
    if (run / "model.pt").is_file():
        model = load_finetuned(run)[0]
    else:
        model = load_pretrained_backbone(run)[0]
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exported(runs, module_tmp):
    """Every case exported, then loaded by its card's snippet in one subprocess."""
    out = module_tmp("exports")
    rng = np.random.default_rng(0)
    cases, files, expected = [], {}, {}
    for run, fmts in CASES.items():
        shape = export_mod.load_run(runs[run]).meta["input_shape"]
        x = rng.random((3, *shape), dtype=np.float32)
        np.save(out / f"{run}.npy", x)
        expected[run] = our_outputs(runs[run], x), our_outputs(runs[run], x[:1])
        for fmt in fmts:
            name = f"{run}-{fmt}"
            file = out / f"{name}{SUFFIXES[fmt]}"
            export_run(ExportConfig(run=str(runs[run]), format=fmt, out=str(file)))
            files[name] = file
            cases.append({"name": name, "folder": str(out), "code": snippet(card_path(file)),
                          "inputs": str(out / f"{run}.npy"), "file": file.name})  # fmt: skip
    (out / "cases.json").write_text(json.dumps(cases))
    (out / "loader.py").write_text(LOADER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(out / "loader.py"), str(out / "cases.json"), str(out / "res.json")],
        capture_output=True, text=True, env=env, cwd=out, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {"files": files, "expected": expected, **json.loads((out / "res.json").read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("run, fmt", PARAMS)
def test_export_loads_without_us_and_matches_our_outputs(exported, run, fmt):
    got = exported["cases"][f"{run}-{fmt}"]
    want, want1 = exported["expected"][run]
    tol = 1e-4 if fmt == "onnx" else 1e-5
    np.testing.assert_allclose(np.asarray(got["y"]), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(got["y1"]), want1, rtol=tol, atol=tol)  # batch of 1
    assert want.shape[1] == (512 if run.startswith("pre") else 3)
    assert exported["leaked"] == []


@pytest.mark.slow
@pytest.mark.parametrize("run, fmt", [p for p in PARAMS if p[1] != "torchvision"])
def test_metadata_says_what_the_network_expects(exported, runs, run, fmt):
    meta = exported["cases"][f"{run}-{fmt}"]["meta"]
    config = json.loads((runs[run] / "config.json").read_text())
    assert meta["format"] == "deeplense_ssl.export.v1" and meta["library"] == fmt
    in_chans = {"pre_cifar": 2, "ft_mlp": 2, "pre_imagenet": 3, "ft_linear": 3}[run]
    assert json.loads(meta["in_chans"]) == in_chans
    assert json.loads(meta["input_shape"]) == [in_chans, 16, 16]
    assert meta["stem"] == ("cifar" if run in ("pre_cifar", "ft_mlp") else "imagenet")
    assert meta["normalize"] == "minmax" and meta["nan_policy"] == "raise"
    assert json.loads(meta["embedding_dim"]) == 512
    if run.startswith("ft"):
        assert json.loads(meta["class_names"]) == config["spec"]["class_names"]
        assert meta["outputs"] == "logits" and meta["head"] == run.removeprefix("ft_")
    else:
        assert meta["outputs"] == "embeddings" and json.loads(meta["class_names"]) == []


@pytest.mark.slow
def test_torchvision_file_is_a_weights_only_state_dict(exported):
    state = torch.load(exported["files"]["ft_mlp-torchvision"], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {k for k in state if k.startswith("fc.")} == {"fc.0.weight", "fc.0.bias",
                                                        "fc.3.weight", "fc.3.bias"}  # fmt: skip


@pytest.mark.slow
def test_finetune_card_has_data_budget_metrics_and_the_file_hash(exported, runs):
    file = exported["files"]["ft_mlp-safetensors"]
    card = card_path(file).read_text()
    assert card.startswith("---\nlibrary_name: torchvision\n")
    assert hashlib.sha256(file.read_bytes()).hexdigest() in card
    metrics = json.loads((runs["ft_mlp"] / "metrics.json").read_text())
    macro = metrics["ci"]["auc_macro"]
    assert f"| ROC-AUC (macro) | {metrics['roc_auc']['macro']:.4f} | " in card
    assert f"[{macro['lower']:.4f}, {macro['upper']:.4f}]" in card
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in card
    pre = json.loads((runs["pre_cifar"] / "config.json").read_text())["resolved"]
    assert pre["data_fingerprint"]["sha256"] in card  # the pretraining data, through the run
    summary = json.loads((runs["ft_mlp"] / "config.json").read_text())["data_summary"]
    assert f"**label fraction**: {summary['label_fraction']}" in card
    assert f"total {summary['n_labels_used']}" in card
    assert str(runs["ft_mlp"].parent / "d2.h5") in card
    assert "deeplense-ssl 0.1.0" in card and "import deeplense_ssl" not in card


@pytest.mark.slow
def test_pretrain_card_has_data_fingerprint_recipe_and_monitors(exported, runs):
    card = card_path(exported["files"]["pre_cifar-onnx"]).read_text()
    config = json.loads((runs["pre_cifar"] / "config.json").read_text())
    res = config["resolved"]
    assert res["data_fingerprint"]["sha256"] in card
    assert f"**method**: `{config['config']['method']}`" in card
    assert f"optimiser steps**: done {res['final_step']}" in card
    last = [json.loads(line) for line in (runs["pre_cifar"] / "metrics.jsonl").open()][-1]
    assert f"**knn_top1**: {last['knn_top1']:.4f}" in card
    assert "onnxruntime.InferenceSession" in card and "ONNX metadata_props" in card


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def fake_run(tmp_path) -> Path:
    return fake_pretrain_run(tmp_path / "run")


def _assert_refused(code, err, out_file, *texts, exit_code=1):
    assert code == exit_code, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for text in texts:
        assert text in err, (text, err)
    assert not out_file.exists() and not card_path(out_file).exists()
    if out_file.parent.is_dir():  # no temporary left either
        assert not [p for p in out_file.parent.iterdir() if p.name.startswith(f".{out_file.name}")]


def test_unfinished_pretrain_run_is_refused(fake_run, tmp_path, capsys):
    (fake_run / "backbone.pt").rename(fake_run / "checkpoint.pt")
    out = tmp_path / "e" / "b.safetensors"
    code, _, err = run_cli(["export", fake_run, "--out", out], capsys)
    _assert_refused(
        code, err, out, str(fake_run), "did not finish (checkpoint.pt only)", "--resume"
    )


def test_finetune_run_without_model_is_refused(tmp_path, capsys):
    run = tmp_path / "ft"
    run.mkdir()
    (run / "config.json").write_text('{"kind": "finetune"}')
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", run, "--format", "onnx", "--out", out], capsys)
    _assert_refused(code, err, out, f"{run}: no model.pt", "re-run `deeplense-ssl finetune`")


@pytest.mark.parametrize(
    "content, text",
    [(None, "not a run folder (no config.json)"), ('{"kind": "evaluate"}', "kind='evaluate'"),
     ("{not json", "unreadable run config")],
)  # fmt: skip
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, content, text):
    run = tmp_path / "notrun"
    run.mkdir()
    if content is not None:
        (run / "config.json").write_text(content)
    out = tmp_path / "b.safetensors"
    code, _, err = run_cli(["export", run, "--out", out], capsys)
    _assert_refused(code, err, out, str(run), text)


@pytest.mark.parametrize(
    "name, fmt, text",
    [
        ("b.onnx", "safetensors", "a .onnx file is not a safetensors export"),
        ("b.md", "safetensors", "the model card goes beside the export"),
        ("b.safetensors", "torchvision", "pass --format safetensors or name the file b.pth"),
    ],
)
def test_output_names_that_would_mislead_are_refused(fake_run, tmp_path, capsys, name, fmt, text):
    out = tmp_path / name
    code, _, err = run_cli(["export", fake_run, "--format", fmt, "--out", out], capsys)
    _assert_refused(code, err, out, str(out), text)


def test_output_inside_the_run_folder_is_refused(fake_run, capsys):
    out = fake_run / "backbone.pth"
    before = (fake_run / "backbone.pt").read_bytes()
    code, _, err = run_cli(["export", fake_run, "--format", "torchvision", "--out", out], capsys)
    _assert_refused(code, err, out, "inside the run folder")
    assert (fake_run / "backbone.pt").read_bytes() == before


def test_unknown_format_is_refused_from_flag_and_config(fake_run, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    code, _, err = run_cli(["export", fake_run, "--format", "keras", "--out", out], capsys)
    # a bad flag value is a usage error (exit 2, with the usage line), as for every command
    assert code == 2 and "Error: Invalid value for '--format': 'keras' is not one of" in err
    assert "Traceback" not in err and not out.exists()
    yaml = tmp_path / "c.yaml"
    yaml.write_text("format: keras\n")
    code, _, err = run_cli(["export", fake_run, "--config", yaml, "--out", out], capsys)
    _assert_refused(code, err, out, f"{yaml}: format='keras' is not one of")
    with pytest.raises(ConfigError, match="export needs a run folder"):
        export_run(ExportConfig(run=str(fake_run)))


def test_missing_onnx_extra_names_the_extra(fake_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    out = tmp_path / "b.onnx"
    code, _, err = run_cli(["export", fake_run, "--format", "onnx", "--out", out], capsys)
    _assert_refused(code, err, out, str(out), "onnxscript", 'pip install "deeplense-ssl[export]"')


def test_a_failure_leaves_the_previous_export_and_card_untouched(fake_run, tmp_path, monkeypatch):
    out = tmp_path / "b.safetensors"
    export_run(ExportConfig(run=str(fake_run), out=str(out)))
    before = out.read_bytes(), card_path(out).read_text()
    torch.manual_seed(1)
    shutil.rmtree(fake_run)
    fake_pretrain_run(fake_run, seed=1)  # new weights, then the card fails half-way

    def broken(*args, **kwargs):
        raise RuntimeError("card failed")

    monkeypatch.setattr(export_mod, "render_card", broken)
    with pytest.raises(RuntimeError, match="card failed"):
        export_run(ExportConfig(run=str(fake_run), out=str(out)))
    assert (out.read_bytes(), card_path(out).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.md", "b.safetensors", "run"]


def test_cli_export_end_to_end_writes_file_and_card(fake_run, tmp_path, capsys):
    out = tmp_path / "exports" / "backbone.safetensors"
    code, stdout, err = run_cli(["export", fake_run, "--out", out], capsys)
    assert code == 0, err
    assert f"wrote {out} (safetensors, resnet18 -> embeddings)" in stdout
    state = load_file(out)
    ours = torch.load(fake_run / "backbone.pt", weights_only=True)
    assert state.keys() == ours.keys()
    assert all(torch.equal(state[k], ours[k]) for k in ours)
    assert oct(out.stat().st_mode & 0o777) == oct(card_path(out).stat().st_mode & 0o777)
