"""``deeplense-ssl demo``: the whole pipeline on a small simulated dataset."""

from __future__ import annotations

import click

from .options import device_option, seed_option


@click.command(name="demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo_output",
    show_default=True,
    help="Folder for the data, the run folders and report.html.",
)
@click.option("--quick", is_flag=True, help="Tiny smoke-test sizes (seconds; numbers meaningless).")
@device_option
@seed_option
def command(out: str, quick: bool, device: str, seed: int) -> None:
    """Simulate, pretrain (SimCLR), fine-tune a linear probe and the baselines, evaluate, report.

    Re-running continues where a previous run stopped (finished stages are skipped).
    """
    from deeplense_ssl.demo import run_demo

    report = run_demo(out, device=device, seed=seed, quick=quick)
    click.echo(f"Report: {report.resolve()}")
