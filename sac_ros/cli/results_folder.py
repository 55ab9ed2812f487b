"""Where a long command's results go: an output folder that an earlier run's results are
never silently written over (``sac eval``, ``sac report``, ``sac reproduce``)."""

from __future__ import annotations

from pathlib import Path

from sac_ros.cli.outputs import check_outputs
from sac_ros.core.errors import SacError


def add_overwrite_option(parser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even when it already holds files")


def check_results_folder(folder: str | Path, overwrite: bool,
                         files: dict[str, str | None] | None = None) -> None:
    """``--out`` can be written (``outputs.check_outputs``) and is empty, missing, or
    ``overwrite`` is given: a second run never replaces the first one's results unasked."""
    check_outputs("--out", folder, files or {})
    path = Path(folder)
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise SacError(f"--out {folder} already holds files (an earlier run's results?); "
                       "give another --out, or --overwrite to replace them")
