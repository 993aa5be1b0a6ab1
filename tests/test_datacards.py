"""Data cards: the shipped cards in data_cards/ (layout, index, links) and the rendering of
dataset summaries by deeplense_ssl.datacards (``inspect`` text and drafted cards)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_cards import assert_card_layout

from deeplense_ssl.datacards import format_summary, render_data_card, write_data_card
from deeplense_ssl.datasets import summarize
from deeplense_ssl.io import write_hdf5

CARDS_DIR = Path(__file__).resolve().parents[1] / "data_cards"
CARDS = sorted(p for p in CARDS_DIR.glob("*.md") if p.name != "README.md")


# ----------------------------------------------------------------------------- shipped cards


def test_there_are_cards_for_made_and_read_datasets() -> None:
    names = {p.stem for p in CARDS}
    # One per simulated model the package makes, and the DeepLense sets it reads.
    assert {"sim_model_i", "sim_model_ii", "sim_model_iii"} <= names
    assert {"deeplense_model_i", "deeplense_model_ii", "deeplense_model_iii"} <= names


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.name)
def test_card_layout(card: Path) -> None:
    assert_card_layout(card.read_text(), card.name)


@pytest.mark.parametrize("card", sorted(CARDS_DIR.glob("*.md")), ids=lambda p: p.name)
def test_card_links_resolve(card: Path) -> None:
    """Every relative link or image in a card (and the index) points at a file that exists."""
    for target in re.findall(r"\]\(([^)#\s]+)\)", card.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (card.parent / target).exists(), f"{card.name}: broken link {target}"


def test_index_lists_every_card_once() -> None:
    index = (CARDS_DIR / "README.md").read_text()
    linked = re.findall(r"\[([\w.]+\.md)\]\(\1\)", index)
    assert sorted(linked) == [p.name for p in CARDS]


# ----------------------------------------------------------------------------- rendering


@pytest.fixture
def raw_summary(tmp_path: Path) -> dict:
    """The summary of a folder with NaN/inf pixels, a constant image and mixed dtypes."""
    root = tmp_path / "d"
    (root / "lens").mkdir(parents=True)
    (root / "nonlens").mkdir()
    a = np.arange(100.0).reshape(10, 10)
    a[0, :3] = np.nan
    a[1, 0] = np.inf
    np.save(root / "lens" / "a.npy", a)
    np.save(root / "lens" / "b.npy", np.full((10, 10), 4.0))
    np.save(root / "nonlens" / "c.npy", np.arange(100, dtype=np.int64).reshape(1, 10, 10))
    return summarize(root)


def test_card_of_a_raw_folder(raw_summary: dict) -> None:
    card = render_data_card(raw_summary)
    assert card.startswith("---\npretty_name: d\n")
    assert_card_layout(card)
    assert "3 NaN" in card and "1 inf" in card
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["size_categories"] == ["n<1K"]
    assert front["source_datasets"] == [raw_summary["path"]]
    assert "| lens | 2 | 3 | 99 | " in card  # finite min / max of the class
    assert "- Mixed dtypes: float64 x2, int64 x1." in card
    assert "Constant images (min-max scaling would divide by zero): 1." in card


def test_card_of_a_converted_file_names_its_source_and_cleaning(tmp_path: Path) -> None:
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[0, 0, 0, 0] = 1.0
    path = tmp_path / "conv.h5"
    write_hdf5(
        path,
        images,
        np.array([0, 1, 1]),
        ["no_sub", "cdm"],
        nan_counts=np.array([2, 0, 5]),
        attrs={"nan_policy": "zero", "provenance": {"source": "/data/orig"}},
    )
    summary = summarize(path)
    card = render_data_card(summary, name="Model X")
    assert_card_layout(card)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["pretty_name"] == "Model X" and front["source_datasets"] == ["/data/orig"]
    assert "Cleaned at conversion with nan_policy=zero: 7 non-finite pixels in 2" in card
    text = format_summary(summary)
    assert "cleaned at conversion (nan_policy=zero): 7 non-finite pixels in 2 images" in text


def test_format_summary_lines(raw_summary: dict) -> None:
    text = format_summary(raw_summary)
    lines = text.splitlines()
    assert lines[0] == f"{raw_summary['path']}  (folder, 3 images)"
    assert "  lens                        2   values 3 .. 99" in lines
    assert "NaN pixels:    3 (1.000%); inf pixels: 1 (0.333%); images with any: 1 e.g. " \
           "lens/a.npy" in lines  # fmt: skip
    assert "constant images: 1 e.g. lens/b.npy" in lines


def test_write_data_card_is_atomic_and_returns_the_path(raw_summary: dict, tmp_path: Path):
    out = tmp_path / "cards" / "d.md"
    assert write_data_card(raw_summary, out, name="D") == out
    assert out.read_text() == render_data_card(raw_summary, name="D")
    assert [p.name for p in out.parent.iterdir()] == ["d.md"]  # no temporary left beside it


@pytest.mark.parametrize(
    "n, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (10**6, "1M<n<10M")]
)
def test_size_category_buckets(raw_summary: dict, n: int, bucket: str) -> None:
    card = render_data_card({**raw_summary, "n_images": n})
    assert yaml.safe_load(card.split("---\n")[1])["size_categories"] == [bucket]
