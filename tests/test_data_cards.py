"""The shipped data cards in data_cards/: layout, index and links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers_cards import assert_card_layout

CARDS_DIR = Path(__file__).resolve().parents[1] / "data_cards"
CARDS = sorted(p for p in CARDS_DIR.glob("*.md") if p.name != "README.md")


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
