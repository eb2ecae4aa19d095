"""The narration pretraining dataset, ``"ego4d_narration"``.

Pretraining items have exactly the NLQ layout: EgoClip narrations act as queries (their text in
``narration_query``, ``query_type`` "narration", "nlq" or "nlq_narration"), each with a short
window on its clip, read from a narration jsonl and a narration text-feature store. So this is
the ``"ego4d"`` class under a second name, not a copy: point ``train_jsonl_file`` /
``text_feat_dir`` at the narration files (usually with ``enable_temporal_jittering: True``).
The shipped pretraining config names ``"ego4d"`` and works unchanged.
"""
from .registry import DATASETS
from .ego4d import Ego4dDataset

DATASETS.register("ego4d_narration")(Ego4dDataset)

NarrationDataset = Ego4dDataset

__all__ = ["NarrationDataset"]
