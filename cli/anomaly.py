"""``deeplense-ssl anomaly``: kNN anomaly scores of the images of an embedding index."""

from __future__ import annotations

import click

from deeplense_ssl.config import AnomalyConfig, config_from_sources

from .options import allow_pickle_option, config_option, explicit_params, field_option

C = AnomalyConfig


@click.command("anomaly")
@field_option(C, "index", type=click.Path(dir_okay=False), help="The .h5 written by `embed`.")
@field_option(
    C,
    "reference",
    type=click.Path(dir_okay=False),
    help="Index of normal (e.g. training) images; default: the index itself, self excluded.",
)
@field_option(C, "k", "-k", "--k", help="Neighbours averaged over.")
@field_option(C, "top", help="Most anomalous images shown and listed.")
@field_option(
    C,
    "out",
    type=click.Path(file_okay=False),
    help="Folder for anomaly_scores.h5, anomaly_scores.csv and anomaly_top.png.",
)
@field_option(C, "backend", help="exact | faiss (extra `search`) | auto (faiss for 100k+ rows).")
@field_option(C, "ivf_lists", help="faiss: inverted lists of an approximate IVF index (0: exact).")
@field_option(C, "nprobe", help="faiss IVF: lists visited per query.")
@field_option(C, "montage", help="Draw anomaly_top.png (reads the images back from their files).")
@allow_pickle_option(C)
@config_option
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def command(config_path: str | None, progress: bool, **params) -> None:
    """Score every image by its mean cosine distance to its k nearest neighbours."""
    from deeplense_ssl.embedding import anomaly_index

    ctx = click.get_current_context()
    cfg = config_from_sources(AnomalyConfig, config_path, explicit_params(ctx, params))
    result = anomaly_index(cfg, progress=progress)
    for d in result.top:
        label = d["label"] if d["label"] is not None else "-"
        click.echo(f"{d['rank']:>4}  {d['score']:.4f}  {d['row']:>8}  {label:<12} {d['source']}")
    click.echo(
        f"Scored {len(result.scores)} images (k={cfg.k}, {result.backend}); wrote "
        f"{', '.join(str(p) for p in result.files)}"
    )
