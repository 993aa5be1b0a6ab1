"""The data-card layout (Hugging Face dataset-card style) that every card must follow."""

from __future__ import annotations

FRONT_MATTER_KEYS = (
    "pretty_name:",
    "license:",
    "task_categories:",
    "tags:",
    "size_categories:",
    "source_datasets:",
)

CARD_SECTIONS = (
    "## Dataset description",
    "## Dataset structure",
    "## Creation / simulation parameters",
    "## Known problems",
    "## Intended use",
    "## Citation",
)


def assert_card_layout(text: str, where: str = "card") -> None:
    """Front matter with every key, then every section, once each, in order."""
    assert text.startswith("---\n"), f"{where}: no YAML front matter"
    front = text.split("---\n")[1]
    missing = [k for k in FRONT_MATTER_KEYS if k not in front]
    assert not missing, f"{where}: front matter lacks {missing}"
    for sec in CARD_SECTIONS:
        assert text.count(f"\n{sec}\n") == 1, f"{where}: {sec!r} missing or repeated"
    positions = [text.index(f"\n{sec}\n") for sec in CARD_SECTIONS]
    assert positions == sorted(positions), f"{where}: sections out of order"
