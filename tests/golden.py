"""The golden fixtures of the reference, and the one place that says how close float32 must come.

Tolerances. Every comparison of float32 results with the reference's (or of two float32 paths of
our own that compute the same thing) allows ``|got - want| <= atol + rtol * |want|`` with the
``(atol, rtol)`` of its quantity in ``TOLERANCES``. float32 results move by a few units in the last
place between CPUs (other SIMD widths, other GEMM kernels, other thread counts), and the model
compounds that through 10-20 layers; the values below are about 4x the worst deviation measured
with ``python tests/golden_noise.py`` (this CPU, two threads, and the settings that make it take
other CPUs' code paths; figures in tests/README.md) and cover the 1.13e-6 score gap seen on an
AVX-512 CPU, while staying 100-1000x below what a wrong layer, mask or rule moves (a 1e-3 change
of one offset fails the head comparison). Scores get a relative term because a logit error d
moves a sigmoid score s by about ``s (1 - s) d``: error in proportion to the score.

Near-ties: candidates are compared as sets (each matched one to one within the tolerance), and a
result list may order two windows differently only where the reference's scores are within the
score tolerance of each other. Counts, labels, masks, points and label targets stay exact.
"""
from __future__ import annotations

import copy
import json
from typing import Dict, List, Tuple

import torch

from conftest import fixture_path
from libs.evaluation.postprocess import decode_candidates
from libs.modeling import make_meta_arch

VARIANTS = ["tiny_model", "tiny_model_star"]

# quantity -> (atol, rtol); units: grid units for pre-NMS segments, seconds for result segments
TOLERANCES: Dict[str, Tuple[float, float]] = {
    "features": (1e-5, 1e-6),  # embeddings, block outputs, neck (magnitudes up to ~9)
    "cls_logits": (3e-5, 4e-6),
    "offsets": (3e-5, 4e-6),
    "pre_nms_segments": (1e-4, 0.0),
    "pre_nms_scores": (2e-6, 1e-5),
    "result_segments": (1e-4, 0.0),
    "result_scores": (2e-6, 1e-5),
    "losses": (1e-7, 1e-6),
    "gradients": (2e-6, 2e-5),
}

_CACHE: dict = {}


def golden(variant: str, name: str):
    """A golden file of ``variant`` (cached; from tests/fixtures/golden)."""
    key = (variant, name)
    if key not in _CACHE:
        path = fixture_path("golden", variant, name)
        if name.endswith(".json"):
            with open(path) as f:
                _CACHE[key] = json.load(f)
        else:
            _CACHE[key] = torch.load(path, weights_only=True)
    return _CACHE[key]


def build(variant: str, video_pad_mode="reference", text_pad_mode="reference", **extra):
    """The golden model in eval mode, with the reference's weights."""
    cfg = golden(variant, "config.json")
    kwargs = {**cfg["model"], "video_pad_mode": video_pad_mode, "text_pad_mode": text_pad_mode, **extra}
    model = make_meta_arch(cfg["model_name"], **kwargs)
    model.load_state_dict(golden(variant, "state_dict.pt"), strict=True)
    return model.eval()


def inputs(variant: str) -> list:
    return copy.deepcopy(golden(variant, "inputs.pt"))


def batch_for(model, items):
    """``items`` collated as ``model`` pads them, in the model's dtype (the loaders' job in a run)."""
    return model.collator(model.training)(items).to(dtype=next(model.parameters()).dtype)


def record_intermediates(model) -> dict:
    """Forward hooks capturing what the golden ``outputs_eval.pt`` holds: the embeddings (inputs
    of the first stem blocks), every stem and branch block's output, and the neck's output."""
    rec: dict = {"txt_stem": {}, "vid_stem": {}, "branch": {}}
    bb = model.backbone
    bb.txt_stem[0].register_forward_pre_hook(lambda m, a: rec.__setitem__("txt_embd", (a[0], a[1])))
    bb.vid_stem[0].register_forward_pre_hook(lambda m, a: rec.__setitem__("vid_embd", (a[0], a[1])))
    for name in ("txt_stem", "vid_stem", "branch"):
        for i, blk in enumerate(getattr(bb, name)):
            blk.register_forward_hook(lambda m, a, o, n=name, i=i: rec[n].__setitem__(i, o[0]))
    model.neck.register_forward_hook(lambda m, a, o: rec.__setitem__("fpn", o))
    return rec


def channel_first(outputs: List[torch.Tensor]) -> List[torch.Tensor]:
    return [x.permute(0, 2, 1) for x in outputs]


def candidates_of(model, heads) -> list:
    """The pre-NMS candidates of ``heads`` under the model's test_cfg."""
    cfg = model.test_cfg
    return decode_candidates(
        heads.points, heads.fpn_masks, heads.cls_logits, heads.offsets,
        cfg["pre_nms_thresh"], cfg["pre_nms_topk"], cfg["duration_thresh"],
    )


def _bound(want: torch.Tensor, quantity: str, scale: float) -> torch.Tensor:
    atol, rtol = TOLERANCES[quantity]
    return scale * (atol + rtol * want.abs())


def excess(got: torch.Tensor, want: torch.Tensor, quantity: str, mask=None, scale: float = 1.0):
    """``(largest |got - want| / tolerance, largest |got - want|)`` over ``mask`` (default all)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if got.shape != want.shape:
        raise AssertionError(f"{quantity}: shape {tuple(got.shape)} != golden {tuple(want.shape)}")
    gap = (got - want).abs()
    ratio = gap / _bound(want, quantity, scale)
    if mask is not None:
        gap, ratio = gap[mask], ratio[mask]
    if gap.numel() == 0:
        return 0.0, 0.0
    return ratio.max().item(), gap.max().item()


def assert_close(got, want, quantity: str, mask=None, scale: float = 1.0, where: str = "") -> None:
    """``got`` equals ``want`` within the quantity's tolerance (times ``scale``) where ``mask``."""
    ratio, gap = excess(got, want, quantity, mask, scale)
    assert ratio <= 1.0, f"{quantity}{where}: gap {gap:.3g} is {ratio:.2f}x the tolerance"


def _within(ours: dict, ref: dict, seg_quantity: str, score_quantity: str, scale: float) -> torch.Tensor:
    """``(N_ours, N_ref)``: row i of ours may stand for row j of ref (windows, score, label)."""
    seg_ok = ((ours["segments"][:, None, :].double() - ref["segments"][None].double()).abs()
              <= _bound(ref["segments"][None].double(), seg_quantity, scale)).all(-1)
    score_ok = ((ours["scores"][:, None].double() - ref["scores"][None].double()).abs()
                <= _bound(ref["scores"][None].double(), score_quantity, scale))
    same_label = ours["labels"][:, None] == ref["labels"][None]
    return seg_ok & score_ok & same_label


def match_rows(ours: dict, ref: dict, seg_quantity: str, score_quantity: str, scale: float = 1.0):
    """A one-to-one matching of ours' rows to ref's within tolerance: ``(ours_index, ref_index)``.

    Augmenting paths over the "within tolerance" relation, so near-duplicate rows can never make
    a valid matching look invalid. Raises AssertionError when counts differ or no matching exists.
    """
    count = ref["scores"].numel()
    assert ours["scores"].numel() == count, f"{ours['scores'].numel()} rows, golden has {count}"
    ours = {key: ours[key].cpu() for key in ("segments", "scores", "labels")}
    allowed = _within(ours, ref, seg_quantity, score_quantity, scale).tolist()
    owner = [-1] * count  # ref row -> ours row

    def claim(i: int, seen: set) -> bool:
        for j, ok in enumerate(allowed[i]):
            if ok and j not in seen:
                seen.add(j)
                if owner[j] < 0 or claim(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(count):
        assert claim(i, set()), (
            f"row {i} ({ours['segments'][i].tolist()}, score {ours['scores'][i].item():.7g}) "
            f"matches no golden row within the {seg_quantity}/{score_quantity} tolerances")
    return torch.tensor(owner, dtype=torch.long), torch.arange(count)


def assert_same_candidates(ours: dict, ref: dict, scale: float = 1.0) -> None:
    """Pre-NMS candidates as sets: counts exact, a one-to-one match within tolerance."""
    match_rows(ours, ref, "pre_nms_segments", "pre_nms_scores", scale)


def assert_same_results(ours: list, ref: list, scale: float = 1.0) -> None:
    """Final results: ids exact, rows within tolerance in the reference's order (two rows may
    trade places only where the reference's scores tie within the score tolerance)."""
    assert len(ours) == len(ref)
    for got, want in zip(ours, ref):
        assert (got["video_id"], got["query_id"]) == (want["video_id"], want["query_id"])
        assert torch.equal(got["labels"].cpu(), want["labels"])
        ours_rows, ref_rows = match_rows(got, want, "result_segments", "result_scores", scale)
        scores = want["scores"].double()
        for i, j in zip(ours_rows.tolist(), ref_rows.tolist()):
            if i != j:  # our row i is the reference's row j: only where their scores tie
                assert (scores[i] - scores[j]).abs() <= _bound(scores[j], "result_scores", scale), (
                    f"{got['query_id']}: result {i} is the reference's result {j}")
