"""Evaluation: from head outputs to scored answers.

``postprocess`` (decode + NMS on the outputs' device, windows in seconds), ``evaluator`` (running a
model over a dataset; the recall evaluator), ``metrics`` (the official Recall@K / mIoU),
``submission`` (EvalAI files: writing, reading, validating), ``analysis`` and ``visualize``
(reports and timelines), ``ensemble`` (combining runs), ``build`` (the evaluation split, loader
and ground truth that ``train.py`` and ``eval.py`` share).
"""
