"""benchmarks/label_efficiency.py (protocol v2): arguments, the planned runs, row names, and a
tiny end-to-end run (slow)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_efficiency as le  # noqa: E402

from deeplense_ssl import finetuning  # noqa: E402
from deeplense_ssl.config import FinetuneConfig  # noqa: E402
from deeplense_ssl.finetuning import learning_rates  # noqa: E402
from deeplense_ssl.heads import BACKBONE_TRAINING_HEADS  # noqa: E402
from deeplense_ssl.methods import METHOD_NAMES  # noqa: E402
from deeplense_ssl.runtime import cpu_has_native_bf16  # noqa: E402


def _plan(*argv: str):
    return le.resolve_plan(le.parse_args(list(argv)))


def test_defaults_follow_the_protocol():
    plan = _plan()
    assert plan["methods"] == list(METHOD_NAMES)  # every registered method, not a fixed tuple
    assert 3 * plan["n_unlabelled_per_class"] >= 3000  # a realistic unlabelled pool
    assert len(set(plan["sim_seeds"].values())) == 3  # three pools, three seeds
    assert plan["min_steps"] >= 300 and plan["fractions"] == [0.01, 0.1, 1.0]
    assert plan["rows"] == {"full_finetune": True, "baselines": True}
    paths = le.pool_paths(plan, "model_ii", Path("w"))
    assert len({paths[k] for k in ("unlabelled", "labelled", "test")}) == 3
    assert "s1000" in paths["unlabelled"].name and "s3000" in paths["test"].name


def test_overrides_reach_the_plan():
    plan = _plan(
        "--methods", "vicreg", "byol", "--pretrain-epochs", "3", "--augment", "lensing-exact",
        "--pretrain-option", "temperature=0.2", "--pretrain-option", "blur-sigmas-px=[0, 1.5]",
        "--finetune-option", "lr=3e-4", "--fractions", "0.1", "0.01", "--seeds", "4", "5",
        "--min-steps", "50", "--sim-seeds", "7", "8", "9", "--paired",
    )  # fmt: skip
    assert plan["methods"] == ["vicreg", "byol"] and plan["pretrain_epochs"] == 3
    assert plan["recipe"] == {
        "augment": "lensing-exact",
        "pretrain_options": {"temperature": 0.2, "blur_sigmas_px": [0, 1.5]},
        "paired": True,
    }
    assert plan["finetune_options"] == {"lr": 3e-4}
    assert plan["fractions"] == [0.01, 0.1] and plan["seeds"] == [4, 5]
    assert plan["min_steps"] == 50
    assert plan["sim_seeds"] == {"unlabelled": 7, "labelled": 8, "test": 9}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pretrain-option", "no_such_field=1"], "no field 'no_such_field'"),
        (["--pretrain-option", "seed=3"], "set by the benchmark"),
        (["--pretrain-option", "temperature"], "KEY=VALUE"),
        (["--finetune-option", "label_fraction=0.5"], "set by the benchmark"),
        (["--fractions", "0"], "in (0, 1]"),
    ],
)
def test_bad_options_stop_before_anything_runs(argv, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace("]", r"\]")):
        _plan(*argv)


def test_dry_run_plans_every_row_with_the_same_budget(tmp_path, capsys):
    plan = _plan(
        "--models", "model_ii", "--methods", "simclr", "vicreg", "--fractions", "0.01", "1",
        "--pretrain-option", "stem=small", "--seeds", "0", "1",
    )  # fmt: skip
    steps = le.plan_model(plan, "model_ii", tmp_path, "cpu")
    pre = [cfg for kind, _, cfg in steps if kind == "pretrain"]
    ft = [(name, cfg) for kind, name, cfg in steps if kind == "finetune"]
    assert len(pre) == 2 * 2  # methods x seeds
    assert len(ft) == 2 * 2 * (2 * 2 + 2)  # seeds x fractions x (probe + full per method + 2)
    assert all(Path(c.data).name.startswith("unlabelled") and c.stem == "small" for c in pre)
    assert len({c.out for c in pre}) == 4 and len({c.out for _, c in ft}) == len(ft)
    rows = {(n, c.head, c.init) for n, c in ft}
    assert rows == {
        ("simclr", "linear", "pretrained"),
        ("simclr", "full", "pretrained"),
        ("vicreg", "linear", "pretrained"),
        ("vicreg", "full", "pretrained"),
        ("random-init", "linear", "random"),
        ("supervised", "full", "scratch"),
    }
    for _, c in ft:
        assert Path(c.data).name.startswith("labelled") and c.min_steps == 300
        assert c.epochs == (plan["probe_epochs"] if c.head == "linear" else plan["end_to_end_epochs"])  # fmt: skip # noqa: E501
        if c.init != "pretrained":
            assert c.stem == "small" and c.checkpoint is None  # the pretraining's architecture
    # another recipe never reuses a run folder of this one
    other = _plan("--models", "model_ii", "--methods", "simclr", "--pretrain-option", "stem=small",
                  "--pretrain-option", "temperature=0.3")  # fmt: skip
    other_pre = [c.out for k, _, c in le.plan_model(other, "model_ii", tmp_path, "cpu")
                 if k == "pretrain"]  # fmt: skip
    assert not set(other_pre) & {c.out for c in pre}
    le.main(["--models", "model_ii", "--methods", "simclr", "--dry-run",
             "--work-dir", str(tmp_path / "w")])  # fmt: skip
    out = capsys.readouterr().out
    assert '"protocol": "v2"' in out and "supervised" in out
    assert not (tmp_path / "w").exists()  # nothing simulated or trained


def test_the_ssl_full_run_folder_follows_the_backbone_rate(tmp_path, monkeypatch):
    def full_runs(plan):
        steps = le.plan_model(plan, "model_ii", tmp_path, "cpu")
        return {c.init: c for k, _, c in steps if k == "finetune" and c.head == "full"}

    base = _plan("--models", "model_ii", "--methods", "simclr", "--seeds", "0", "--fractions", "1")
    runs = full_runs(base)
    assert runs["pretrained"].backbone_lr_scale == FinetuneConfig.backbone_lr_scale
    # a changed package default names new SSL full runs; the other rows keep their folders
    monkeypatch.setattr(le, "DEFAULT_BACKBONE_LR_SCALE", 0.5)
    changed = full_runs(base)
    assert changed["pretrained"].out != runs["pretrained"].out
    assert changed["pretrained"].backbone_lr_scale == 0.5
    assert changed["scratch"].out == runs["scratch"].out
    # an explicit --finetune-option wins over the default
    opt = _plan("--models", "model_ii", "--methods", "simclr", "--seeds", "0", "--fractions", "1",
                "--finetune-option", "backbone_lr_scale=0.25")  # fmt: skip
    assert full_runs(opt)["pretrained"].backbone_lr_scale == 0.25


def test_ssl_heads_add_an_lp_ft_row_beside_the_full_fine_tune(tmp_path):
    plan = _plan("--models", "model_ii", "--methods", "simclr", "--seeds", "0", "--fractions",
                 "1", "--ssl-heads", "full", "lp-ft")  # fmt: skip
    steps = le.plan_model(plan, "model_ii", tmp_path, "cpu")
    tuned = {c.head: c for k, _, c in steps if k == "finetune" and c.init == "pretrained"}
    assert set(tuned) == {"linear", "full", "lp-ft"}
    assert tuned["lp-ft"].out != tuned["full"].out and "-lp-ft-" in tuned["lp-ft"].out
    assert tuned["lp-ft"].backbone_lr_scale == tuned["full"].backbone_lr_scale
    # the default plans no LP-FT run (the benchmark's run folders stay as they were)
    default = _plan("--models", "model_ii", "--methods", "simclr", "--seeds", "0")
    heads = {c.head for k, _, c in le.plan_model(default, "model_ii", tmp_path, "cpu")
             if k == "finetune"}  # fmt: skip
    assert heads == {"linear", "full"}
    assert set(le.FINETUNE_ROW_NAMES) == set(BACKBONE_TRAINING_HEADS)  # every head has a name
    assert le.row_label({"method": "simclr", "head": "lp-ft"}, {}, None) == "simclr + LP-FT"


def _finished_run(folder: Path, cfg: FinetuneConfig) -> Path:
    """A run folder's config.json as finetune records it (the config and the rates used)."""
    folder.mkdir()
    resolved = {**learning_rates(cfg), "epochs": 99}  # resolved epochs may exceed the config's
    (folder / "config.json").write_text(
        json.dumps({"config": dataclasses.asdict(cfg), "resolved": resolved})
    )
    return folder


def test_a_finished_run_is_compared_by_the_learning_rates_it_used(tmp_path, monkeypatch):
    probe = FinetuneConfig(data="d.h5", checkpoint="p", head="linear", backbone_lr_scale=0.1)
    run = _finished_run(tmp_path / "probe", probe)
    # a probe's backbone is frozen: its scale changed nothing, so the run is reused
    le.check_same_config(dataclasses.replace(probe, backbone_lr_scale=1.0), run)
    with pytest.raises(SystemExit, match=r"lr 0.001 -> 0.01"):  # the head's rate did change
        le.check_same_config(dataclasses.replace(probe, lr=1e-2), run)
    # so does a changed default rate, though the config (lr None) reads the same
    monkeypatch.setitem(finetuning.DEFAULT_LR, "probe", 5e-3)
    with pytest.raises(SystemExit, match=r"\(lr 0.001 -> 0.005\)"):
        le.check_same_config(probe, run)
    monkeypatch.undo()
    full = dataclasses.replace(probe, head="full")
    run = _finished_run(tmp_path / "full", full)
    with pytest.raises(SystemExit, match=r"\(backbone_lr 0.0001 -> 0.001\)"):
        le.check_same_config(dataclasses.replace(full, backbone_lr_scale=1.0), run)
    scratch = FinetuneConfig(data="d.h5", init="scratch", head="full", backbone_lr_scale=0.1)
    run = _finished_run(tmp_path / "scratch", scratch)
    le.check_same_config(dataclasses.replace(scratch, backbone_lr_scale=1.0), run)


def test_row_names_and_protocols(tmp_path):
    header = {"protocol": "v2", "pretrain_epochs": 10,
              "recipe": {"augment": "lensing-exact", "pretrain_options": {"stem": "small",
                         "temperature": 0.2}, "paired": True}}  # fmt: skip
    full = {"method": "simclr", "head": "full"}
    assert (
        le.row_label(full, header, 10)
        == "simclr + full fine-tune [augment=lensing-exact, stem=small, temperature=0.2, paired]"
    )
    assert le.row_label({"method": "supervised", "head": "full"}, header, 10) == (
        "supervised [stem=small]"
    )
    assert le.row_label({"method": "simclr", "head": "linear"}, {"pretrain_epochs": 20}, 10) == (
        "simclr, 20 epochs"
    )
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"header": {"pretrain_epochs": 6}, "rows": []}))
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"header": {"protocol": "v2", "pretrain_epochs": 6}, "rows": []}))
    assert le.results_protocol([str(v1)]) == "v1" and le.results_protocol([str(v2)]) == "v2"
    with pytest.raises(SystemExit, match="different protocols"):
        le.results_protocol([str(v1), str(v2)])


@pytest.mark.slow
def test_tiny_benchmark_runs_every_row_and_counts_its_labels(tmp_path, monkeypatch):
    pytest.importorskip("lenstronomy")
    out = tmp_path / "le.json"
    argv = [
        "--models", "model_ii", "--methods", "simclr", "--image-size", "32",
        "--n-unlabelled-per-class", "3", "--n-labelled-per-class", "4", "--n-test-per-class", "2",
        "--pretrain-epochs", "1", "--pretrain-batch-size", "6", "--pretrain-option", "max_steps=1",
        "--pretrain-option", "stem=small", "--probe-epochs", "1", "--end-to-end-epochs", "1",
        "--min-steps", "3", "--fractions", "0.5", "--n-bootstrap", "5", "--device", "cpu",
        "--work-dir", str(tmp_path / "runs"), "--out", str(out),
        "--markdown", str(tmp_path / "le.md"),
    ]  # fmt: skip
    le.main(argv)
    result = json.loads(out.read_text())
    assert result["header"]["protocol"] == "v2" and "--min-steps 3" in result["header"]["command"]
    rows = result["rows"]
    assert [(r["method"], r["head"]) for r in rows] == [
        ("simclr", "linear"),
        ("simclr", "full"),
        ("random-init", "linear"),
        ("supervised", "full"),
    ]
    for r in rows:  # 50% of 12 labels in total, too few to validate on
        assert r["n_labels_train"] + r["n_labels_val"] == 6
        assert r["model_selection"] == "fixed-schedule" and r["optimizer_steps"] >= 3
    assert "simclr + full fine-tune" in (tmp_path / "le.md").read_text()
    assert result["pretrain"][0]["seconds"] is not None
    # the precision the pretraining used: amp "auto" resolved on this CPU
    assert result["pretrain"][0]["amp"] == ("bfloat16" if cpu_has_native_bf16() else "off")

    # run again: the finished runs are not trained or scored again, and the rows are the same
    def no_more(*_args, **_kwargs):
        raise AssertionError("a finished run was trained or scored again")

    monkeypatch.setattr(le, "evaluate", no_more)
    monkeypatch.setattr(le, "finetune", no_more)
    le.main(argv)
    again = json.loads(out.read_text())["rows"]
    assert [r["auc_macro"] for r in again] == [r["auc_macro"] for r in rows]

    # a finished folder whose recorded config differs (a changed default) is refused, by name
    scratch = next((tmp_path / "runs").glob("*/ft-scratch-full-*"))
    recorded = json.loads((scratch / "config.json").read_text())
    recorded["config"]["weight_decay"] = 0.5
    (scratch / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(SystemExit, match=f"{scratch.name} was trained with another config "
                                         r"\(weight_decay 0.5 -> 0.0001\)"):  # fmt: skip
        le.main(argv)
