"""Dataset summaries -> text and Markdown data cards.

:func:`deeplense_ssl.datasets.summarize` computes a JSON-safe summary of any input; this module
only renders it: :func:`format_summary` is what ``deeplense-ssl inspect`` prints, and
:func:`render_data_card` / :func:`write_data_card` draft a data card in the Hugging Face layout
that the cards in ``data_cards/`` follow (YAML front matter, then description, structure,
creation/simulation parameters, known problems, intended use, citation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .io import write_text_atomic

__all__ = ["format_summary", "render_data_card", "write_data_card"]

CARD_TAGS = ["astronomy", "strong-gravitational-lensing", "dark-matter", "deeplense"]
"""Tags of every drafted card's front matter."""


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a :func:`~deeplense_ssl.datasets.summarize` dict (``inspect``)."""
    lines = [
        f"{summary['path']}  ({summary['kind']}, {summary['n_images']} images)",
        "classes:",
    ]
    for c, v in summary["per_class"].items():
        rng = f"{v['min']:.4g} .. {v['max']:.4g}" if v["min"] is not None else "no finite pixels"
        lines.append(f"  {c:<20} {v['count']:>8}   values {rng}")
    if not summary["labelled"]:
        lines.append("  (no labels found: give labels_csv / label_pattern to label a flat folder)")
    lines.append(f"stored shapes: {_fmt_counts(summary['shapes'])}")
    lines.append(f"as (C, H, W):  {_fmt_counts(summary['chw_shapes'])}")
    lines.append(f"dtypes:        {_fmt_counts(summary['dtypes'])}")
    if summary["value_min"] is not None:
        lines.append(
            f"values:        {summary['value_min']:.6g} .. {summary['value_max']:.6g} "
            f"(mean {summary['value_mean']:.6g}, finite pixels)"
        )
    lines.append(
        f"NaN pixels:    {summary['nan_pixels']} ({summary['nan_fraction']:.3%}); inf pixels: "
        f"{summary['inf_pixels']} ({summary['inf_fraction']:.3%}); images with any: "
        f"{summary['images_with_nonfinite']}" + _examples(summary["nonfinite_examples"])
    )
    lines.append(
        f"constant images: {summary['constant_images']}" + _examples(summary["constant_examples"])
    )
    if "stored_nan_counts" in summary:
        s = summary["stored_nan_counts"]
        policy = summary.get("attrs", {}).get("nan_policy", "?")
        lines.append(
            f"cleaned at conversion (nan_policy={policy}): {s['pixels']} non-finite pixels in "
            f"{s['images']} images"
        )
    for k, v in summary["params"].items():
        lines.append(f"param {k}: {v['known']} known, {v['min']} .. {v['max']}")
    return "\n".join(lines)


def _examples(sources: list[str]) -> str:
    return f" e.g. {', '.join(sources)}" if sources else ""


def render_data_card(summary: dict[str, Any], *, name: str | None = None) -> str:
    """A data-card draft (Hugging Face layout, as in ``data_cards/``) from a summary.

    Args:
        summary: a :func:`~deeplense_ssl.datasets.summarize` dict.
        name: the card's ``pretty_name`` (default: the stem of the summarised path).

    Returns:
        Markdown with YAML front matter. Sections marked TODO need a human: licence,
        simulation/creation details, citation.
    """
    pretty = name or Path(summary["path"]).stem
    attrs = summary.get("attrs", {})
    params = "\n".join(
        f"- `{k}`: {v['known']} images, {v['min']} .. {v['max']}"
        for k, v in summary["params"].items()
    )
    return f"""---
{yaml.safe_dump(_front_matter(summary, pretty), sort_keys=False).strip()}
---

# {pretty}

## Dataset description

TODO: what the images show, where they come from, and who made them.
Drafted by `deeplense-ssl inspect --card` from `{summary["path"]}` ({summary["kind"]}).

## Dataset structure

- Images: {summary["n_images"]}; stored shapes {_fmt_counts(summary["shapes"])}; as (C, H, W)
  {_fmt_counts(summary["chw_shapes"])}; dtypes {_fmt_counts(summary["dtypes"])}.
- Pixel values (finite): {_fmt_num(summary["value_min"])} .. {_fmt_num(summary["value_max"])},
  mean {_fmt_num(summary["value_mean"])}.
- Classes (label order): {", ".join(summary["class_names"])}.

| class | images | min | max | mean |
|---|---|---|---|---|
{_class_rows(summary)}

## Creation / simulation parameters

Stored attributes:
{_attr_lines(attrs)}
{("Per-image parameters:" + chr(10) + params) if params else ""}
TODO: simulator, instrument (pixel scale in arcsec, PSF), noise model, random seeds.

## Known problems

{chr(10).join(_known_problems(summary))}

## Intended use

Self-supervised pretraining and few-label classification of strong-lensing images with
`deeplense_ssl`. TODO: out-of-scope uses.

## Citation

TODO: how to cite the data (and the DeepLense / simulator papers it builds on).
"""


def write_data_card(summary: dict[str, Any], out: str | Path, *, name: str | None = None) -> Path:
    """Write :func:`render_data_card` to ``out`` atomically; returns the path."""
    return write_text_atomic(out, render_data_card(summary, name=name))


def _front_matter(summary: dict[str, Any], pretty: str) -> dict[str, Any]:
    provenance = summary.get("attrs", {}).get("provenance")
    source = provenance.get("source", summary["path"]) if isinstance(provenance, dict) else None
    return {
        "pretty_name": pretty,
        "license": "unknown",
        "task_categories": ["image-classification"],
        "tags": list(CARD_TAGS),
        "size_categories": [_size_category(summary["n_images"])],
        "source_datasets": [str(source or summary["path"])],
    }


def _class_rows(summary: dict[str, Any]) -> str:
    return "\n".join(
        f"| {c} | {v['count']} | {_fmt_num(v['min'])} | {_fmt_num(v['max'])} | "
        f"{_fmt_num(v['mean'])} |"
        for c, v in summary["per_class"].items()
    )


def _attr_lines(attrs: dict[str, Any]) -> str:
    lines = [
        f"- `{k}`: {json.dumps(v) if isinstance(v, dict | list) else v}"
        for k, v in attrs.items()
        if k != "class_names"
    ]
    return "\n".join(lines) or "- (none stored)"


def _known_problems(summary: dict[str, Any]) -> list[str]:
    """Bullet lines: non-finite pixels, constant images, cleaning, mixed shapes/dtypes, labels."""
    problems = [
        f"- Non-finite pixels: {summary['nan_pixels']} NaN ({summary['nan_fraction']:.4%}) and "
        f"{summary['inf_pixels']} inf ({summary['inf_fraction']:.4%}) in "
        f"{summary['images_with_nonfinite']} images.",
        f"- Constant images (min-max scaling would divide by zero): {summary['constant_images']}.",
    ]
    if "stored_nan_counts" in summary:
        s = summary["stored_nan_counts"]
        policy = summary.get("attrs", {}).get("nan_policy", "?")
        problems.append(
            f"- Cleaned at conversion with nan_policy={policy}: "
            f"{s['pixels']} non-finite pixels in {s['images']} source images."
        )
    if len(summary["chw_shapes"]) > 1:
        problems.append(
            f"- Mixed image shapes: {_fmt_counts(summary['chw_shapes'])}; use --image-size."
        )
    if len(summary["dtypes"]) > 1:
        problems.append(f"- Mixed dtypes: {_fmt_counts(summary['dtypes'])}.")
    if not summary["labelled"]:
        problems.append("- No labels were found (one class `unlabelled`).")
    problems.append("- TODO: anything else known (simulation shortcuts, label noise, leakage).")
    return problems


def _fmt_counts(counts: dict[str, int]) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} x{v}" for k, v in items[:6])
    return text + (f", ... ({len(items) - 6} more)" if len(items) > 6 else "")


def _fmt_num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket of ``n`` images."""
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"
