"""``deeplense-ssl demo``: the whole pipeline on a small simulated dataset."""

from __future__ import annotations

import dataclasses

import click

from deeplense_ssl.config import PretrainConfig

from .options import device_option, field_option, seed_option


@click.command(name="demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the data, the run folders and report.html.",
)
@field_option(
    PretrainConfig,
    "method",
    help="Self-supervised method to pretrain (default: the package's default recipe, "
    "contrastive-blur, the strongest in benchmarks/RESULTS.md).",
)
@click.option("--quick", is_flag=True, help="Tiny smoke-test sizes (seconds; numbers meaningless).")
@device_option(PretrainConfig)
@seed_option(PretrainConfig)
def command(out: str, method: str, quick: bool, device: str, seed: int) -> None:
    """Simulate, pretrain (the default lensing recipe unless --method), fine-tune a linear probe
    and the baselines, evaluate, report.

    Re-running continues where a previous run stopped (finished stages are skipped).
    """
    from deeplense_ssl.demo import plan_for, run_demo

    plan = dataclasses.replace(plan_for(device, quick), method=method)
    report = run_demo(out, device=device, seed=seed, plan=plan)
    click.echo(f"Report: {report.resolve()}")
