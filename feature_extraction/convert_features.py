"""Convert a feature store to another layout (LMDB -> HDF5, .pt/.npy folder -> HDF5, ...).

    python feature_extraction/convert_features.py --src data/features/internvideo.lmdb \
        --dst data/features/internvideo.h5 --dtype float16

Resumable: ids the destination already holds are skipped, and an interrupted run continues from
``<dst>.partial``. Prints how many arrays were copied and skipped. A thin wrapper over
``libs.datasets.feature_store.copy_store``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.store_append import VIDEO_FIELD, add_destination_arguments, resolve_kind  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.feature_store import copy_store, open_store  # noqa: E402


def convert_store(src: str, dst: str, dst_kind: Optional[str] = "hdf5", dtype: str = "float32",
                  field: str = VIDEO_FIELD, folder_format: str = "npy",
                  progress: bool = True) -> Tuple[int, int]:
    """Copy every id of store ``src`` into store ``dst``; returns ``(copied, skipped)``.

    ``skipped`` counts the source ids the destination already held (a resumed conversion).
    ``field`` names the npz member of an LMDB destination (``features`` for video,
    ``token_features`` for text); the readers accept either.
    """
    kind = resolve_kind(dst, dst_kind)
    source = open_store(src)
    try:
        total = len(source.keys())
    finally:
        source.close()
    copied = copy_store(src, dst, kind=kind, dtype=dtype, field=field,
                        folder_format=folder_format, progress=progress)
    return copied, total - copied


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="source store: *.h5 file, LMDB dir or folder of .pt/.npy")
    add_destination_arguments(parser)
    parser.add_argument("--field", default=VIDEO_FIELD, choices=["features", "token_features"],
                        help="npz member name of an LMDB destination")
    parser.add_argument("--folder-format", default="npy", choices=["npy", "pt"],
                        help="file format of a folder destination")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)

    def run() -> None:
        copied, skipped = convert_store(args.src, args.dst, args.dst_kind, args.dtype, args.field,
                                        args.folder_format, progress=not args.no_progress)
        print(f"{args.src} -> {args.dst}: copied {copied}, skipped {skipped} already present")

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
