"""``deeplense-ssl inspect PATH [--card OUT.md]``: summarise a dataset or draft its data card."""

from __future__ import annotations

import json

import click

from .options import allow_pickle_option


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option(
    "--card",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a data-card draft (data_cards/ layout) to this Markdown file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@allow_pickle_option
@click.option("--labels-csv", type=click.Path(), default=None, help="CSV with file,label columns.")
@click.option("--label-pattern", default=None, help="File-name label rules (see convert).")
@click.option("--labels-file", type=click.Path(), default=None, help="Labels of a stacked array.")
@click.option("--images-key", default=None, help="Image dataset name in HDF5/.npz if ambiguous.")
@click.option("--labels-key", default=None, help="Label dataset name in HDF5/.npz if ambiguous.")
def command(
    path: str,
    card: str | None,
    as_json: bool,
    allow_pickle: bool,
    labels_csv: str | None,
    label_pattern: str | None,
    labels_file: str | None,
    images_key: str | None,
    labels_key: str | None,
) -> None:
    """Counts per class, shapes, dtypes, value ranges, NaN/inf fractions, constant images.

    Statistics are of the raw pixels, before any cleaning; for a file written by ``convert``,
    the NaN counts found at conversion are reported too.
    """
    from deeplense_ssl.datasets import format_summary, summarize, write_data_card

    reader = {
        "labels_csv": labels_csv,
        "label_pattern": label_pattern,
        "labels": labels_file,
        "images_key": images_key,
        "labels_key": labels_key,
    }
    summary = summarize(
        path,
        allow_pickle=allow_pickle,
        progress=None,
        **{k: v for k, v in reader.items() if v is not None},
    )
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if card:
        write_data_card(summary, card)
        click.echo(f"wrote data-card draft {card}")
