"""Resumable appending of computed arrays to a feature store, through the public store API.

The tools here compute arrays (concatenated video features, text token features) that must land
in a store that may already hold some ids from an interrupted run. ``libs.datasets.feature_store``
offers an atomic ``write_store`` (a whole new store) and a resumable ``copy_store`` (store ->
store, skipping ids present). Appending is built from the two: each chunk of new arrays is
written as a small temporary HDF5 store, then ``copy_store`` merges it into the destination. A
killed run therefore loses at most one chunk, and the destination is never half-written (it is
either complete, or ``<dst>.partial`` from which ``copy_store`` resumes).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np

from libs.core.errors import ConfigError
from libs.datasets.feature_store import (
    HDF5_SUFFIXES, STORE_KINDS, copy_store, open_store, write_store)

# npz member of the reference's LMDB layout, per kind of feature
VIDEO_FIELD = "features"
TEXT_FIELD = "token_features"


def add_destination_arguments(parser: Any, what: str = "store") -> None:
    """The destination flags every store-writing tool takes: ``--dst``, ``--dst-kind``, ``--dtype``."""
    parser.add_argument("--dst", required=True, help=f"destination {what} (HDF5: a *.h5 file)")
    parser.add_argument("--dst-kind", default="hdf5", choices=list(STORE_KINDS))
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32"],
                        help="stored precision (readers always return float32)")


def resolve_kind(path: str, kind: Optional[str], option: str = "--dst-kind") -> str:
    """The store kind to write at ``path``; an HDF5 store must be a ``.h5`` / ``.hdf5`` file.

    The suffix rule lets readers detect the kind from the path alone (``open_store(path)``).
    """
    kind = kind or "hdf5"
    if kind not in STORE_KINDS:
        raise ConfigError(f"{option} {kind!r}: expected one of {list(STORE_KINDS)}")
    if kind == "hdf5" and not path.lower().endswith(HDF5_SUFFIXES):
        raise ConfigError(f"destination {path}: an HDF5 store needs a {' or '.join(HDF5_SUFFIXES)} "
                          f"file name, or pass {option} lmdb|folder for a directory store")
    return kind


def stored_ids(path: str, kind: str) -> Set[str]:
    """Ids already in the destination (or in the ``.partial`` store an interrupted copy left)."""
    for candidate in (path + ".partial", path):
        if os.path.exists(candidate):
            store = open_store(candidate, kind=kind)
            try:
                return set(store.keys())
            finally:
                store.close()
    return set()


def chunked(items: Iterable, size: int) -> Iterator[List]:
    """Consecutive lists of at most ``size`` items."""
    chunk: List = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def append_arrays(dst: str, arrays: List[Tuple[str, np.ndarray]], kind: str, dtype: str = "float32",
                  field: str = VIDEO_FIELD, folder_format: str = "npy") -> int:
    """Add ``(id, (T, C) array)`` pairs to store ``dst`` (created if absent); returns how many.

    Ids ``dst`` already holds are skipped (``copy_store``'s rule), never overwritten.
    """
    if not arrays:
        return 0
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", suffix=".chunk", dir=folder)
    try:
        chunk_path = os.path.join(scratch, "chunk.h5")
        write_store(chunk_path, arrays, kind="hdf5", dtype="float32")
        return copy_store(chunk_path, dst, kind=kind, dtype=dtype, field=field,
                          folder_format=folder_format, progress=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
