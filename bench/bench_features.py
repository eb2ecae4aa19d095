"""Feature-loading benchmark: HDF5 versus LMDB (reference layout) versus a folder of .npy files.

Usage (from the repository root)::

    python bench/bench_features.py [--clips 12] [--clip-len 900] [--dim 2304] [--quick]

Writes the same synthetic clips (float32 ``(T, C)``) into the three store kinds under a
temporary folder with ``libs.datasets.feature_store.write_store``, then reads every clip through
``open_store`` in three states:

* ``cold``: a fresh store object after ``posix_fadvise(DONTNEED)`` evicted the store's files
  from the OS page cache (what a first epoch pays; no root needed for files we own);
* ``warm``: a fresh store object, files in the page cache, no in-process cache (later epochs
  without ``cache_bytes``; LMDB still decompresses its npz every time);
* ``cached``: the store's own LRU cache (``cache_bytes``) already holds the clip.

``per_query_ms`` prices the reference's access pattern (the clip is read once per query, 11
queries per clip, from a warm page cache) against video-centric loading (once per clip). Times
are the median over clips of one read; the last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, Iterable, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from libs.datasets.feature_store import open_store, write_store  # noqa: E402

STORE_PATHS = {"hdf5": "clips.h5", "lmdb": "clips_lmdb", "folder": "clips_npy"}
QUERIES_PER_CLIP = 11


def evict_from_page_cache(path: str) -> None:
    """Ask the kernel to drop ``path``'s (a file or every file below a folder) cached pages."""
    files: Iterable[str]
    if os.path.isdir(path):
        files = [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names]
    else:
        files = [path]
    for name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_reads(path: str, kind: str, keys: List[str], cache_bytes: int = 0, prime: bool = False) -> List[float]:
    """Seconds of one ``store[key]`` per key (after one untimed pass when ``prime``)."""
    store = open_store(path, kind=kind, cache_bytes=cache_bytes)
    try:
        if prime:
            for key in keys:
                store[key]
        times = []
        for key in keys:
            start = time.perf_counter()
            array = store[key]
            times.append(time.perf_counter() - start)
            assert array.dtype == np.float32
        return times
    finally:
        store.close()


def size_on_disk(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)
    return os.path.getsize(path)


def main(argv: List[str] | None = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--clip-len", type=int, default=900)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--quick", action="store_true", help="4 clips")
    parser.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    args = parser.parse_args(argv)
    num_clips = 4 if args.quick else args.clips

    rng = np.random.default_rng(0)
    clips = {f"clip{i:03d}": rng.standard_normal((args.clip_len, args.dim), dtype=np.float32)
             for i in range(num_clips)}  # (T, C) time-major, as the stores hold them
    keys = list(clips)
    clip_mb = args.clip_len * args.dim * 4 / 2**20
    print(f"# {num_clips} clips of {args.clip_len} x {args.dim} float32 ({clip_mb:.1f} MB each)", flush=True)

    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for kind, name in STORE_PATHS.items():
            path = os.path.join(tmp, name)
            start = time.perf_counter()
            write_store(path, clips.items(), kind=kind, field="features")
            write_s = time.perf_counter() - start
            evict_from_page_cache(path)
            cold = statistics.median(timed_reads(path, kind, keys))
            warm = statistics.median(timed_reads(path, kind, keys, prime=True))
            cached = statistics.median(timed_reads(path, kind, keys, cache_bytes=2 * num_clips * 2**20 * int(clip_mb + 1),
                                                   prime=True))
            results[kind] = {
                "cold_ms": cold * 1e3, "warm_ms": warm * 1e3, "cached_ms": cached * 1e3,
                "cold_mb_per_s": clip_mb / cold, "warm_mb_per_s": clip_mb / warm,
                "disk_mb": size_on_disk(path) / 2**20, "write_s": write_s,
                "per_query_ms_reference_pattern": warm * 1e3,
                "per_query_ms_video_centric": warm * 1e3 / QUERIES_PER_CLIP,
            }
            r = results[kind]
            print(f"{kind:6s}: cold {r['cold_ms']:7.2f} ms ({r['cold_mb_per_s']:6.0f} MB/s), warm {r['warm_ms']:7.2f} ms, "
                  f"cached {r['cached_ms']:.4f} ms, {r['disk_mb']:.0f} MB on disk; per query: reference "
                  f"{r['per_query_ms_reference_pattern']:.2f} ms, video-centric {r['per_query_ms_video_centric']:.2f} ms",
                  flush=True)
    print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
