"""1-D non-maximum suppression: hard NMS, soft NMS and the reference's ``batched_nms`` wrapper.

Three backends compute the same numbers (spec section 7):

* ``"cpp"``: the compiled extension ``libs.utils._nms_cpu`` (float32, CPU), the reference's algorithm;
* ``"cuda"``: the kernel ``libs.utils._nms_cuda`` for CUDA tensors (one thread block per problem);
* ``"torch"``: pure PyTorch, always available, any device (a Python loop over selections).

``"auto"`` picks CUDA for CUDA tensors when the kernel is built, else the C++ extension (on a CPU
copy), else PyTorch, warning once per process that the extension is missing.

Exactness: every backend reproduces the reference's float32 arithmetic and its orderings, which
decide ties: the hard NMS orders candidates with ``scores.sort(0, descending=True)`` (torch's
unstable sort, as the reference's C++ does) and soft NMS takes the first maximum of the *current*
working array, which the swaps and the end-to-hole removals of the reference reorder. The torch
backend computes the gaussian weight as ``exp`` in float64 rounded to float32 (float32 ``torch.exp``
is 1 ulp off now and then); the C++ extension calls ``std::exp`` on float as the reference does.

Soft NMS selections are non-increasing in score and the first K of them depend only on the first
K iterations, so ``max_keep`` (early stop after K selections) returns exactly the first K rows of
the full run, in O(K N) instead of O(N^2).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from libs.core.errors import DataError

__all__ = [
    "available_backends",
    "nms",
    "softnms",
    "seg_voting",
    "batched_nms",
    "batched_nms_of_queries",
]

BACKENDS = ("auto", "cpp", "cuda", "torch")
SOFTNMS_METHODS = {0: "hard", 1: "linear", 2: "gaussian"}
AREA_EPS = 1e-6  # the reference adds it to every length (so zero-length segments have an area)

try:  # the extensions are optional: a machine without a compiler still installs and runs
    from libs.utils import _nms_cpu  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _nms_cpu = None
try:
    from libs.utils import _nms_cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _nms_cuda = None

_warned_missing_extension = False


def available_backends() -> List[str]:
    """Backends usable in this process: ``"torch"`` always, ``"cpp"`` / ``"cuda"`` when built."""
    names = ["torch"]
    if _nms_cpu is not None:
        names.append("cpp")
    if _nms_cuda is not None and torch.cuda.is_available():
        names.append("cuda")
    return names


def _warn_missing_extension_once() -> None:
    global _warned_missing_extension
    if not _warned_missing_extension:
        _warned_missing_extension = True
        warnings.warn(
            "the C++ NMS extension libs.utils._nms_cpu is not built; NMS falls back to the "
            "pure-PyTorch implementation (same results, slower). Build it with "
            "`pip install -e . --no-build-isolation`.",
            RuntimeWarning,
            stacklevel=3,
        )


def _resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"NMS backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _nms_cuda is not None:
            return "cuda"
        if _nms_cpu is not None:
            return "cpp"
        _warn_missing_extension_once()
        return "torch"
    if backend == "cpp" and _nms_cpu is None:
        raise RuntimeError("NMS backend 'cpp' requested but libs.utils._nms_cpu is not built")
    if backend == "cuda":
        if _nms_cuda is None:
            raise RuntimeError("NMS backend 'cuda' requested but libs.utils._nms_cuda is not built")
        if device.type != "cuda":
            raise ValueError(f"NMS backend 'cuda' needs CUDA tensors, got tensors on {device}")
    return backend


def _check_inputs(segs: torch.Tensor, scores: torch.Tensor) -> None:
    if segs.dim() != 2 or segs.shape[1] != 2:
        raise DataError(f"NMS segs must have shape (N, 2), got {tuple(segs.shape)}")
    if scores.dim() != 1 or scores.shape[0] != segs.shape[0]:
        raise DataError(
            f"NMS scores must have shape (N,) with N = {segs.shape[0]} segments, "
            f"got {tuple(scores.shape)}"
        )
    if not (segs.is_floating_point() and scores.is_floating_point()):
        raise DataError(f"NMS segs and scores must be floating point, got {segs.dtype} / {scores.dtype}")


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------
# pure-PyTorch implementations (the reference's loops; vectorised over candidates)
# ---------------------------------------------------------------------------------------------
def _overlap(x1: torch.Tensor, x2: torch.Tensor, area: torch.Tensor, j: int, lo: int, hi: int) -> torch.Tensor:
    """IoU of entry ``j`` with entries ``lo:hi``, in the reference's float32 operation order."""
    xx1 = torch.maximum(x1[j], x1[lo:hi])
    xx2 = torch.minimum(x2[j], x2[lo:hi])
    width = xx2 - xx1
    inter = torch.where(width > 0, width, torch.zeros_like(width))  # std::max(0, w): NaN -> 0
    return inter / (area[j] + area[lo:hi] - inter)


def _nms_torch(segs: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: Optional[int]) -> torch.Tensor:
    num = segs.shape[0]
    order = scores.sort(0, descending=True)[1]  # unstable, like the reference's C++
    x1 = segs[order, 0]  # (N,) in score order
    x2 = segs[order, 1]
    area = x2 - x1 + AREA_EPS
    suppressed = torch.zeros(num, dtype=torch.bool, device=segs.device)
    limit = num if max_keep is None else min(num, max_keep)
    kept: List[int] = []
    pos = 0
    while pos < num and len(kept) < limit:
        kept.append(pos)
        if pos + 1 >= num:
            break
        suppressed[pos + 1:] |= _overlap(x1, x2, area, pos, pos + 1, num) >= iou_threshold
        remaining = torch.nonzero(~suppressed[pos + 1:])
        if remaining.numel() == 0:
            break
        pos = pos + 1 + int(remaining[0])
    return order[torch.tensor(kept, dtype=torch.long, device=segs.device)]


def _gaussian_weight(ovr: torch.Tensor, sigma: float) -> torch.Tensor:
    exponent = -(ovr * ovr) / sigma  # float32, as the reference
    return exponent.double().exp().float()  # correctly rounded, like std::exp(float)


def _decay_weight(ovr: torch.Tensor, iou_threshold: float, sigma: float, method: int) -> torch.Tensor:
    if method == 2:
        return _gaussian_weight(ovr, sigma)
    above = ovr >= iou_threshold
    ones = torch.ones_like(ovr)
    if method == 1:
        return torch.where(above, 1 - ovr, ones)
    return torch.where(above, torch.zeros_like(ovr), ones)


def _compaction_order(alive: torch.Tensor, start: int) -> Tuple[torch.Tensor, int]:
    """Where the reference's removal loop moves entries, for one soft-NMS iteration.

    The reference walks p = start.., and replaces a removed entry by the current last entry
    (re-examining p), shrinking the array. Entries before the final length that survive stay; the
    removed ones there ("holes", ascending) receive the survivors behind that length in
    descending position order. Returns the source position of every slot ``start..start+m-1``.
    """
    num_alive = int(alive.sum())
    positions = torch.arange(start, start + alive.numel(), device=alive.device)  # (M,)
    sources = positions[:num_alive].clone()
    holes = torch.nonzero(~alive[:num_alive]).squeeze(1)
    if holes.numel() > 0:
        movers = positions[num_alive:][alive[num_alive:]].flip(0)
        sources[holes] = movers
    return sources, num_alive


def _first_max(tail: torch.Tensor) -> int:
    """Position of the first maximum, as the reference's strict ``<`` scan finds it.

    NaN never wins a comparison there, so it is chosen only when it sits at position 0.
    """
    pos = int(torch.argmax(tail))  # the first maximum; torch ranks NaN above everything
    if pos == 0 or not math.isnan(float(tail[pos])):
        return pos
    key = torch.where(torch.isnan(tail), torch.full_like(tail, -math.inf), tail)
    return int(torch.argmax(key))


def _softnms_torch(
    segs: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    sigma: float,
    min_score: float,
    method: int,
    max_keep: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    num = segs.shape[0]
    area = segs[:, 1] - segs[:, 0] + AREA_EPS
    # working arrays, reordered in place like the reference's: rows x1, x2, score, area
    work = torch.stack([segs[:, 0], segs[:, 1], scores, area])  # (4, N)
    x1, x2, sc, area = work[0], work[1], work[2], work[3]  # views into `work`
    inds = torch.arange(num, device=segs.device)  # (N,)
    dets = segs.new_empty((num, 3))  # (N, 3): start, end, decayed score in selection order
    limit = num if max_keep is None else min(num, max_keep)
    i = 0
    while i < num and i < limit:
        m = i + _first_max(sc[i:num])
        if m != i:  # swap entries i and m
            work[:, [i, m]] = work[:, [m, i]]
            inds[[i, m]] = inds[[m, i]]
        dets[i] = work[:3, i]
        if i + 1 < num:  # decay the rest, then remove the ones below min_score the reference's way
            ovr = _overlap(x1, x2, area, i, i + 1, num)
            sc[i + 1:num] *= _decay_weight(ovr, iou_threshold, sigma, method)
            alive = ~(sc[i + 1:num] < min_score)
            if not bool(alive.all()):
                sources, num_alive = _compaction_order(alive, i + 1)
                work[:, i + 1:i + 1 + num_alive] = work[:, sources]
                inds[i + 1:i + 1 + num_alive] = inds[sources]
                num = i + 1 + num_alive
        i += 1
    return dets[:i], inds[:i]


# ---------------------------------------------------------------------------------------------
# public primitives
# ---------------------------------------------------------------------------------------------
def nms(
    segs: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    max_keep: Optional[int] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Hard NMS (the reference's C++ ``nms``): indices of the kept segments, by descending score.

    ``segs`` (N, 2) start/end, ``scores`` (N,). A later segment is suppressed when its IoU with a
    kept one is ``>= iou_threshold``; ``min_score`` is not applied here. ``max_keep`` stops after
    that many kept segments (the same first rows). Returns int64 (K,) on the input's device.
    """
    _check_inputs(segs, scores)
    if max_keep is not None and max_keep <= 0:
        max_keep = None
    device = segs.device
    segs, scores = _as_float32(segs), _as_float32(scores)
    if segs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    chosen = _resolve_backend(backend, device)
    limit = -1 if max_keep is None else int(max_keep)
    if chosen == "torch":
        return _nms_torch(segs, scores, float(iou_threshold), max_keep)
    if chosen == "cuda":
        return _nms_cuda.nms(segs, scores, float(iou_threshold), limit)
    return _nms_cpu.nms(segs.cpu(), scores.cpu(), float(iou_threshold), limit).to(device)


def softnms(
    segs: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    sigma: float,
    min_score: float,
    method: int = 2,
    max_keep: Optional[int] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft NMS (the reference's C++ ``softnms``), returning the selections in order.

    ``method`` 0 zeroes, 1 scales by ``1 - IoU`` the scores of segments with IoU ``>=
    iou_threshold``; 2 (gaussian, what the reference uses) scales every score by
    ``exp(-IoU^2 / sigma)``. A segment whose decayed score drops ``< min_score`` is removed (the
    first pick is emitted even below ``min_score``). ``max_keep`` stops after that many selections.
    Returns ``dets`` float32 (n, 3) = (start, end, decayed score) and ``inds`` int64 (n,), the
    input index of each row.
    """
    _check_inputs(segs, scores)
    if method not in SOFTNMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {sorted(SOFTNMS_METHODS)}, got {method!r}")
    if max_keep is not None and max_keep <= 0:
        max_keep = None
    device = segs.device
    segs, scores = _as_float32(segs), _as_float32(scores)
    if segs.shape[0] == 0:
        return segs.new_zeros((0, 3)), torch.zeros(0, dtype=torch.long, device=device)
    chosen = _resolve_backend(backend, device)
    args = (float(iou_threshold), float(sigma), float(min_score), int(method))
    limit = -1 if max_keep is None else int(max_keep)
    if chosen == "torch":
        return _softnms_torch(segs, scores, *args, max_keep)
    if chosen == "cuda":
        return tuple(_nms_cuda.softnms(segs, scores, *args, limit))
    dets, inds = _nms_cpu.softnms(segs.cpu(), scores.cpu(), *args, limit)
    return dets.to(device), inds.to(device)


def seg_voting(
    nms_segs: torch.Tensor, all_segs: torch.Tensor, all_scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Replace each kept segment by the IoU x score weighted mean of the candidates near it.

    Neighbours are the candidates with IoU ``>= iou_threshold``. Like the reference, a kept
    segment of zero (or negative) length divides by zero and gives NaN. Returns (K, 2).
    """
    num_kept, num_all = nms_segs.shape[0], all_segs.shape[0]
    kept = nms_segs[:, None].expand(num_kept, num_all, 2)  # (K, N, 2)
    cands = all_segs[None, :].expand(num_kept, num_all, 2)  # (K, N, 2)
    left = torch.maximum(kept[:, :, 0], cands[:, :, 0])
    right = torch.minimum(kept[:, :, 1], cands[:, :, 1])
    inter = (right - left).clamp(min=0)
    kept_len = kept[:, :, 1] - kept[:, :, 0]
    cand_len = cands[:, :, 1] - cands[:, :, 0]
    iou = inter / (kept_len + cand_len - inter)  # (K, N)
    weights = (iou >= iou_threshold).to(all_scores.dtype) * all_scores[None, :] * iou
    weights /= torch.sum(weights, dim=1, keepdim=True)
    return weights @ all_segs


def _hard_nms_op(segs, scores, cls_idxs, iou_threshold, min_score, max_num, early_stop, backend):
    """The reference's hard-NMS wrapper: drop scores ``<= min_score`` first, then NMS, then cap."""
    if min_score > 0:
        valid = scores > min_score
        segs, scores, cls_idxs = segs[valid], scores[valid], cls_idxs[valid]
    limit = max_num if (early_stop and max_num > 0) else None
    inds = nms(segs, scores, iou_threshold, max_keep=limit, backend=backend)
    if max_num > 0:
        inds = inds[:min(max_num, len(inds))]
    return segs[inds], scores[inds], cls_idxs[inds]


def _soft_nms_op(segs, scores, cls_idxs, iou_threshold, sigma, min_score, max_num, early_stop, backend):
    """The reference's soft-NMS wrapper: gaussian soft NMS, then the first ``max_num`` rows."""
    limit = max_num if (early_stop and max_num > 0) else None
    dets, inds = softnms(segs, scores, iou_threshold, sigma, min_score, 2, max_keep=limit, backend=backend)
    count = min(len(inds), max_num) if max_num > 0 else len(inds)
    return dets[:count, :2], dets[:count, 2], cls_idxs[inds.to(cls_idxs.device)][:count]


def batched_nms(
    segs: torch.Tensor,
    scores: torch.Tensor,
    cls_idxs: torch.Tensor,
    iou_threshold: float,
    min_score: float,
    max_seg_num: int,
    use_soft_nms: bool = True,
    multiclass: bool = True,
    sigma: float = 0.5,
    voting_thresh: float = 0.75,
    backend: str = "auto",
    early_stop: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's post-processing NMS of one query's candidates (spec section 7).

    ``segs`` (N, 2), ``scores`` (N,), ``cls_idxs`` (N,) int64. ``multiclass``: NMS within each
    class, no voting. Otherwise class-agnostic NMS followed, if ``voting_thresh > 0``, by
    :func:`seg_voting` over all input candidates. Results are sorted by score (descending) and
    capped at ``max_seg_num``: ``segments (K, 2), scores (K,), labels (K,)``. ``early_stop`` stops
    each NMS after ``max_seg_num`` selections, which gives the same results faster.
    """
    if segs.shape[0] == 0:  # the reference's float32 empties, on the input's device
        device = segs.device
        return (torch.zeros([0, 2], device=device), torch.zeros([0], device=device),
                torch.zeros([0], dtype=cls_idxs.dtype, device=cls_idxs.device))

    def run(sub_segs, sub_scores, sub_cls):
        if use_soft_nms:
            return _soft_nms_op(sub_segs, sub_scores, sub_cls, iou_threshold, sigma, min_score,
                                max_seg_num, early_stop, backend)
        return _hard_nms_op(sub_segs, sub_scores, sub_cls, iou_threshold, min_score, max_seg_num,
                            early_stop, backend)

    if multiclass:
        parts = []
        for class_id in torch.unique(cls_idxs):
            members = torch.where(cls_idxs == class_id)[0]
            parts.append(run(segs[members], scores[members], cls_idxs[members]))
        new_segs = torch.cat([p[0] for p in parts])
        new_scores = torch.cat([p[1] for p in parts])
        new_cls_idxs = torch.cat([p[2] for p in parts])
    else:
        new_segs, new_scores, new_cls_idxs = run(segs, scores, cls_idxs)
        if voting_thresh > 0:
            new_segs = seg_voting(new_segs, segs.to(new_segs), scores.to(new_segs), voting_thresh)

    return _sorted_and_capped(new_segs, new_scores, new_cls_idxs, max_seg_num)


def _sorted_and_capped(segs, scores, labels, max_seg_num):
    """The wrapper's last step: by score, descending (unstable, as the reference), the first ``max_seg_num``."""
    _, order = scores.sort(descending=True)
    order = order[:min(max_seg_num, segs.shape[0])]
    return segs[order], scores[order], labels[order.to(labels.device)]


def batched_nms_of_queries(
    problems: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    iou_threshold: float,
    min_score: float,
    max_seg_num: int,
    use_soft_nms: bool = True,
    multiclass: bool = True,
    sigma: float = 0.5,
    voting_thresh: float = 0.75,
    backend: str = "auto",
    early_stop: bool = True,
) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`batched_nms` of many queries' ``(segs, scores, cls_idxs)``, on their device.

    When each query is one soft-NMS problem (single-class candidates, or class-agnostic NMS
    without voting) and the CUDA kernel runs, every query goes in one launch
    (``softnms_batched``: one thread block per query); otherwise query by query. Same results.
    """
    if len(problems) == 0:
        return []
    chosen = _resolve_backend(backend, problems[0][0].device)
    if chosen == "cuda" and use_soft_nms and _one_problem_per_query(problems, multiclass, voting_thresh):
        return _soft_nms_in_one_launch(problems, iou_threshold, sigma, min_score, max_seg_num, early_stop)
    return [batched_nms(segs, scores, labels, iou_threshold, min_score, max_seg_num, use_soft_nms=use_soft_nms,
                        multiclass=multiclass, sigma=sigma, voting_thresh=voting_thresh, backend=backend,
                        early_stop=early_stop) for segs, scores, labels in problems]


def _one_problem_per_query(problems, multiclass: bool, voting_thresh: float) -> bool:
    if not multiclass:
        return voting_thresh <= 0
    labels = torch.cat([labels for _, _, labels in problems])
    return labels.numel() == 0 or bool(labels.min() == labels.max())


def _soft_nms_in_one_launch(problems, iou_threshold, sigma, min_score, max_seg_num, early_stop):
    sizes = [segs.shape[0] for segs, _, _ in problems]
    offsets = torch.tensor([0] + list(itertools.accumulate(sizes)), dtype=torch.long)
    segs = _as_float32(torch.cat([segs for segs, _, _ in problems]))
    scores = _as_float32(torch.cat([scores for _, scores, _ in problems]))
    limit = max_seg_num if (early_stop and max_seg_num > 0) else -1
    dets, inds, counts = _nms_cuda.softnms_batched(segs, scores, offsets, float(iou_threshold), float(sigma),
                                                   float(min_score), 2, limit)
    results = []
    for start, count, (_, _, labels) in zip(offsets.tolist(), counts.tolist(), problems):
        if max_seg_num > 0:
            count = min(count, max_seg_num)
        rows, local = dets[start:start + count], inds[start:start + count]
        results.append(_sorted_and_capped(rows[:, :2], rows[:, 2], labels[local.to(labels.device)], max_seg_num))
    return results
