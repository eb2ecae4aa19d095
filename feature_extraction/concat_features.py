"""Concatenate several backbones' video features along channels (e.g. EgoVLP 256-d + InternVideo).

    python feature_extraction/concat_features.py \
        --inputs data/features/internvideo.h5 data/features/egovlp.h5 \
        --dst data/features/internvideo+egovlp.h5

Per clip id the arrays ``(T_i, C_i)`` become one ``(T, sum C_i)`` array, channels in the order of
``--inputs``. Length rule: the backbones cut a video into clip windows of slightly different
sizes, so the last window or two of a video exists for one backbone and not another; lengths
that differ by at most ``--max-len-diff`` features (default 2) are truncated to the shortest
(the lost tail is at most ~1 s at 1.87 features/s). A larger difference means the stores do
not describe the same clip at the same rate, and raises ``DataError`` naming the id and the
lengths. Ids missing from any input are skipped and listed (``--strict``: an error instead).
Resumable: ids the destination already holds are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.store_append import (  # noqa: E402
    VIDEO_FIELD, add_destination_arguments, append_arrays, chunked, resolve_kind, stored_ids)
from libs.core.errors import ConfigError, DataError  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.feature_store import open_store  # noqa: E402

DEFAULT_MAX_LEN_DIFF = 2
# clips per temporary chunk: ~8 MB each at 480 s x 2304 channels float32
DEFAULT_CHUNK_SIZE = 16
# how many missing ids a summary or error lists by name
NUM_LISTED_IDS = 10


def concat_channels(arrays: Sequence[np.ndarray], key: str, names: Sequence[str],
                    max_len_diff: int = DEFAULT_MAX_LEN_DIFF) -> np.ndarray:
    """``[(T_i, C_i)]`` -> ``(min T_i, sum C_i)`` float32, or ``DataError`` if the T_i are too far apart."""
    lengths = [a.shape[0] for a in arrays]
    shortest = min(lengths)
    if max(lengths) - shortest > max_len_diff:
        detail = ", ".join(f"{name}: {n}" for name, n in zip(names, lengths))
        raise DataError(f"clip {key!r}: feature lengths differ by {max(lengths) - shortest} > "
                        f"--max-len-diff {max_len_diff} ({detail}); the stores do not cover the "
                        f"same clip at the same feature rate")
    return np.concatenate([a[:shortest] for a in arrays], axis=1).astype(np.float32)  # (T, sum C)


@dataclasses.dataclass
class ConcatSummary:
    """What one run did: ids written, skipped as already present, truncated, missing somewhere."""

    written: int = 0
    already_present: int = 0
    truncated: Dict[str, List[int]] = dataclasses.field(default_factory=dict)  # id -> lengths
    missing: Dict[str, List[str]] = dataclasses.field(default_factory=dict)    # id -> inputs lacking it
    channels: int = 0

    def lines(self) -> List[str]:
        out = [f"written {self.written} clips ({self.channels} channels), "
               f"skipped {self.already_present} already present, "
               f"truncated {len(self.truncated)} to the shortest input"]
        if self.missing:
            out.append(f"skipped {len(self.missing)} ids missing from some input:")
            for key in sorted(self.missing)[:NUM_LISTED_IDS]:
                out.append(f"  {key}: not in {', '.join(self.missing[key])}")
            if len(self.missing) > NUM_LISTED_IDS:
                out.append(f"  ... and {len(self.missing) - NUM_LISTED_IDS} more")
        return out


def concat_stores(inputs: Sequence[str], dst: str, max_len_diff: int = DEFAULT_MAX_LEN_DIFF,
                  strict: bool = False, dst_kind: Optional[str] = "hdf5", dtype: str = "float32",
                  chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True) -> ConcatSummary:
    """Write the channel concatenation of the stores ``inputs`` for every id they all hold."""
    from tqdm import tqdm

    if len(inputs) < 2:
        raise ConfigError(f"--inputs: need at least two feature stores to concatenate, got {list(inputs)}")
    if max_len_diff < 0 or chunk_size < 1:
        raise ConfigError(f"--max-len-diff must be >= 0 and --chunk-size >= 1, got {max_len_diff}, {chunk_size}")
    kind = resolve_kind(dst, dst_kind)
    stores = [open_store(path) for path in inputs]
    summary = ConcatSummary()
    try:
        key_sets = [set(store.keys()) for store in stores]
        everywhere = set.intersection(*key_sets)
        for key in sorted(set.union(*key_sets) - everywhere):
            summary.missing[key] = [path for path, keys in zip(inputs, key_sets) if key not in keys]
        if strict and summary.missing:
            raise DataError("--strict: " + "; ".join(summary.lines()[1:]))
        done = stored_ids(dst, kind)
        todo = sorted(everywhere - done)
        summary.already_present = len(everywhere & done)
        with tqdm(total=len(todo), desc=f"concat -> {os.path.basename(dst)}", disable=not progress) as bar:
            for keys in chunked(todo, chunk_size):
                arrays = []
                for key in keys:
                    parts = [store[key] for store in stores]
                    joined = concat_channels(parts, key, inputs, max_len_diff)
                    if summary.channels and joined.shape[1] != summary.channels:
                        widths = ", ".join(f"{p}: {a.shape[1]}" for p, a in zip(inputs, parts))
                        raise DataError(f"clip {key!r}: {joined.shape[1]} channels ({widths}); "
                                        f"earlier clips had {summary.channels}")
                    summary.channels = joined.shape[1]
                    if len({a.shape[0] for a in parts}) > 1:
                        summary.truncated[key] = [a.shape[0] for a in parts]
                    arrays.append((key, joined))
                summary.written += append_arrays(dst, arrays, kind, dtype=dtype, field=VIDEO_FIELD)
                bar.update(len(keys))
    finally:
        for store in stores:
            store.close()
    return summary


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="two or more feature stores, any kind")
    add_destination_arguments(parser)
    parser.add_argument("--max-len-diff", type=int, default=DEFAULT_MAX_LEN_DIFF,
                        help="largest length difference (features) truncated to the shortest")
    parser.add_argument("--strict", action="store_true", help="an id missing from an input is an error")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help="clips written per step (a killed run loses at most one step)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)

    def run() -> None:
        summary = concat_stores(args.inputs, args.dst, args.max_len_diff, args.strict, args.dst_kind,
                                args.dtype, args.chunk_size, progress=not args.no_progress)
        print("\n".join(summary.lines()))

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
