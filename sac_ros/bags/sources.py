"""Moved to ``sac_ros.datasets`` (the one dataset layout reader). Kept importable only
until ``eval/reproduce.py`` imports it from there; then delete this module."""

from sac_ros.datasets import Source, find_source, iter_source, read_label

__all__ = ["Source", "find_source", "iter_source", "read_label"]
