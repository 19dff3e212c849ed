"""The trust tests' homes: a private copy of a home with pinned signers, and its vault (`bundles.py`)."""

from bundles import pinned_copy, vault  # noqa: F401 (fixtures)
