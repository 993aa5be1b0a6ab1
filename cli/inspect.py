"""``deeplense-ssl inspect PATH [--card OUT.md]``: summarise a dataset or draft its data card."""

from __future__ import annotations

import json

import click

from deeplense_ssl.config import ConvertConfig

from .options import allow_pickle_option, reader_kwargs, reader_options


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option(
    "--card",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a data-card draft (data_cards/ layout) to this Markdown file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@allow_pickle_option(ConvertConfig)
@reader_options(ConvertConfig)
def command(
    path: str, card: str | None, as_json: bool, allow_pickle: bool, **reader: str | None
) -> None:
    """Counts per class, shapes, dtypes, value ranges, NaN/inf fractions, constant images.

    Statistics are of the raw pixels, before any cleaning; for a file written by ``convert``,
    the NaN counts found at conversion are reported too. The reader options are those of
    ``convert``.
    """
    from deeplense_ssl.datacards import format_summary, write_data_card
    from deeplense_ssl.datasets import summarize

    summary = summarize(path, allow_pickle=allow_pickle, progress=None, **reader_kwargs(reader))
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if card:
        write_data_card(summary, card)
        click.echo(f"wrote data-card draft {card}")
