"""Output paths checked before a long run, so that a typo costs seconds, not the run."""

from __future__ import annotations

import os
from pathlib import Path

from sac_ros.core.errors import SacError


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def check_output_folder(option: str, folder: str | Path) -> None:
    """``folder`` is a writable folder or can be created (nothing is created here)."""
    path = Path(folder).absolute()
    if path.exists():
        if not _writable_dir(path):
            raise SacError(f"{option} {folder}: not a writable folder")
        return
    parent = next(p for p in path.parents if p.exists())  # "/" always exists
    if not _writable_dir(parent):
        raise SacError(f"{option} {folder}: cannot create it in {parent}")


def check_output_file(option: str, file: str | Path | None, created: Path | None = None) -> None:
    """``file`` can be written: its folder exists (or is ``created``, the run's output
    folder) and is writable, and it is not a folder."""
    if not file:
        return
    path = Path(file).absolute()
    if path.is_dir():
        raise SacError(f"{option} {file}: is a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise SacError(f"{option} {file}: not writable")
    parent = path.parent
    if created is not None and parent == Path(created).absolute():
        return
    if not parent.exists():
        raise SacError(f"{option} {file}: folder {parent} does not exist")
    if not _writable_dir(parent):
        raise SacError(f"{option} {file}: cannot write in {parent}")


def check_outputs(folder_option: str, folder: str | Path, files: dict[str, str | None]) -> None:
    """The run's output folder and the files named by options (``{"--json": path}``)."""
    check_output_folder(folder_option, folder)
    for option, file in files.items():
        check_output_file(option, file, created=Path(folder))
