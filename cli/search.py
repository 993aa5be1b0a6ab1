"""``deeplense-ssl search``: nearest neighbours of query images in an embedding index."""

from __future__ import annotations

import click

from deeplense_ssl.config import SearchConfig, config_from_sources

from .options import (
    allow_pickle_option,
    comma_list,
    config_option,
    device_option,
    explicit_params,
    field_option,
)

C = SearchConfig


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
    if value is None:
        return None
    try:
        return [int(v) for v in comma_list(value)]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated row numbers, got {value!r}.") from exc


@click.command("search")
@field_option(C, "index", type=click.Path(dir_okay=False), help="The .h5 written by `embed`.")
@field_option(
    C,
    "query",
    type=click.Path(),
    help="Image file (every image in it is a query), embedded with the index's run after the "
    "same cleaning.",
)
@field_option(
    C,
    "query_index",
    callback=_int_list,
    help="Or rows of the index, e.g. 3,17 (a row never matches itself).",
)
@field_option(C, "k", "-k", "--k", help="Neighbours per query.")
@field_option(
    C,
    "out",
    type=click.Path(file_okay=False),
    help="Folder for neighbours.csv, neighbours.json and montage.png.",
)
@field_option(
    C,
    "backend",
    help="exact: NumPy, streamed; faiss: IndexFlatIP (extra `search`); auto: faiss for "
    "100k+ rows when installed.",
)
@field_option(C, "ivf_lists", help="faiss: inverted lists of an approximate IVF index (0: exact).")
@field_option(C, "nprobe", help="faiss IVF: lists visited per query.")
@field_option(
    C,
    "checkpoint",
    type=click.Path(file_okay=False),
    help="Run that embeds --query images (default: the run recorded in the index).",
)
@field_option(C, "montage", help="Draw montage.png (reads the images back from their files).")
@field_option(C, "batch_size")
@allow_pickle_option(C)
@device_option(C)
@config_option
def command(config_path: str | None, **params) -> None:
    """Find the nearest neighbours (cosine similarity) of query images in an index."""
    from deeplense_ssl.embedding import search_index

    ctx = click.get_current_context()
    cfg = config_from_sources(SearchConfig, config_path, explicit_params(ctx, params))
    result = search_index(cfg)
    last = None
    for row in result.table:
        if row["query"] != last:
            last = row["query"]
            click.echo(f"query {last}: {row['query_source']}")
            click.echo(f"  {'rank':>4}  {'similarity':>10}  {'row':>8}  {'label':<12} source")
        label = row["label"] if row["label"] is not None else "-"
        click.echo(
            f"  {row['rank']:>4}  {row['similarity']:>10.4f}  {row['row']:>8}  {label:<12} "
            f"{row['source']}"
        )
    where = f"; wrote {', '.join(str(p) for p in result.files)}" if result.files else ""
    click.echo(f"({result.backend} search{where})")
