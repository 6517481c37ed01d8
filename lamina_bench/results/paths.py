"""Output paths checked before any work: an empty name, a file where a folder must be, a folder below a
file or one this process may not write is a one-line UserInputError naming the option, never a traceback
after minutes of work. Standard library only (the GPU check imports it at startup)."""

from __future__ import annotations

import os
from pathlib import Path

from lamina_bench.errors import UserInputError


def check_output_folder(path: str | Path, option: str) -> Path:
    """`path` as a folder this process can create or write into; UserInputError (naming `option`) when
    it is empty, an existing file, below a file, or below a folder it may not write."""
    if str(path) == "":
        raise UserInputError(f"{option} is empty; give a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{option} {path} exists and is not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"{option} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{option} {path} cannot be written: {existing} is not writable")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """`path` as a file this process can write (atomically, beside it); UserInputError (naming `option`)
    when it is empty, an existing folder, or its folder cannot be made or written."""
    if str(path) == "":
        raise UserInputError(f"{option} is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} {path} is a folder; give a file name")
    check_output_folder(path.parent, option)
    return path
