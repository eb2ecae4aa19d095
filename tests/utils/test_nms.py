"""NMS: every backend against the reference's fixtures, early stop, and backends against each other.

Fixture cases (../shared/golden/nms/cases.pt, 281 cases from the reference's C++ and Python):
hard-NMS keep indices and soft-NMS methods 0/1 must match bitwise, method 2 indices exactly and
decayed scores within 1e-7 (the gaussian's ``exp`` may round 1 ulp apart), ``batched_nms``
labels exactly (NaN windows where the reference's voting divides by zero). Exact score ties
included: the hard NMS orders them with torch's unstable sort like the reference (50 equal scores
keep 38, 28, 29, 30, ...), soft NMS by the reference's working-array order. No case needs an
xfail. The CUDA backend runs the same tests when a GPU and the kernel are present.
"""
import math
import os
import random
import warnings

import pytest
import torch

from libs.core.errors import DataError
from libs.utils import nms as nms_module
from libs.utils.nms import available_backends, batched_nms, nms, seg_voting, softnms
from tests.conftest import require_shared
from tests.utils.nms_cases import (
    SCORE_ATOL,
    assert_batched_rows_match,
    assert_same_softnms,
    batched_problems,
    large_problem,
    nan_score_problems,
    random_problem,
)

BATCHED_TAGS = ("config", "hard", "agnostic_voting", "soft_max50")
VOTING_ATOL = 1e-6  # voted windows: a float32 matmul over all candidates


def _backend_param(name):
    return pytest.param(
        name,
        marks=pytest.mark.skipif(name not in available_backends(), reason=f"NMS backend {name!r} not built/usable"),
    )


BACKENDS = [_backend_param(name) for name in ("torch", "cpp", "cuda")]
COMPILED = [_backend_param(name) for name in ("cpp", "cuda")]


def _device(backend):
    return torch.device("cuda") if backend == "cuda" else torch.device("cpu")


@pytest.fixture(scope="module")
def golden():
    data = torch.load(require_shared("golden", "nms", "cases.pt"), weights_only=True)
    return data["batched_settings"], data["cases"]


def _inputs(case, device):
    inp = case["inputs"]
    return inp["segs"].to(device), inp["scores"].to(device), inp["labels"].to(device)


# --------------------------------------------------------------------------------------------
# fixtures from the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_keep_matches_reference(golden, backend):
    _, cases = golden
    wrong = []
    for case in cases:
        segs, scores, _ = _inputs(case, _device(backend))
        keep = nms(segs, scores, case["params"]["iou_threshold"], backend=backend).cpu()
        if not torch.equal(keep, case["outputs"]["nms"]["keep"]):
            wrong.append(case["name"])
    assert wrong == []


@pytest.mark.parametrize("method", [0, 1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softnms_matches_reference(golden, backend, method):
    _, cases = golden
    wrong = []
    for case in cases:
        segs, scores, _ = _inputs(case, _device(backend))
        p = case["params"]
        ref = case["outputs"][f"softnms_method{method}"]
        dets, inds = softnms(segs, scores, p["iou_threshold"], p["sigma"], p["min_score"], method, backend=backend)
        dets, inds = dets.cpu(), inds.cpu()
        if method < 2:
            same = torch.equal(inds, ref["inds"]) and torch.equal(dets, ref["dets"])
        else:
            same = (
                torch.equal(inds, ref["inds"])
                and torch.equal(dets[:, :2], ref["dets"][:, :2])
                and torch.allclose(dets[:, 2], ref["dets"][:, 2], rtol=0, atol=SCORE_ATOL)
            )
        if not same:
            wrong.append(case["name"])
    assert wrong == []


def _assert_batched_equal(result, ref, voting, name):
    segs, scores, labels = (t.cpu() for t in result)
    assert torch.equal(labels, ref["labels"]), name
    assert segs.shape == ref["segments"].shape, name
    assert torch.allclose(scores, ref["scores"], rtol=0, atol=SCORE_ATOL), name
    if voting:  # NaN exactly where the reference divides by zero
        assert torch.equal(torch.isnan(segs), torch.isnan(ref["segments"])), name
        assert torch.allclose(segs, ref["segments"], rtol=1e-6, atol=VOTING_ATOL, equal_nan=True), name
    else:  # windows are copies of input rows
        assert torch.equal(segs, ref["segments"]), name


@pytest.mark.parametrize("tag", BATCHED_TAGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_nms_matches_reference(golden, backend, tag):
    settings, cases = golden
    for case in cases:
        segs, scores, labels = _inputs(case, _device(backend))
        result = batched_nms(segs, scores, labels, **settings[tag], backend=backend)
        _assert_batched_equal(result, case["outputs"][f"batched_{tag}"], tag == "agnostic_voting", case["name"])


def test_reference_voting_nan_cases_are_reproduced(golden):
    """Zero-length / reversed segments make the reference's voting divide by zero."""
    settings, cases = golden
    nan_cases = [c for c in cases if torch.isnan(c["outputs"]["batched_agnostic_voting"]["segments"]).any()]
    assert nan_cases, "the fixture is expected to hold voting NaN cases"
    for case in nan_cases:
        segs, scores, labels = _inputs(case, torch.device("cpu"))
        out_segs, _, _ = batched_nms(segs, scores, labels, **settings["agnostic_voting"], backend="torch")
        assert torch.equal(torch.isnan(out_segs), torch.isnan(case["outputs"]["batched_agnostic_voting"]["segments"]))


def test_hard_nms_tie_order_of_the_reference(golden):
    """50 equal scores: the unstable sort's order, not the input order."""
    _, cases = golden
    case = next(c for c in cases if c["name"] == "tie_scores_all_equal_n50")
    keep = nms(case["inputs"]["segs"], case["inputs"]["scores"], case["params"]["iou_threshold"], backend="torch")
    assert keep[:4].tolist() == [38, 28, 29, 30]


# --------------------------------------------------------------------------------------------
# early stop is exact
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", COMPILED)
def test_early_stop_equals_full_run_on_all_cases(golden, backend):
    settings, cases = golden
    for case in cases:
        segs, scores, labels = _inputs(case, _device(backend))
        p = case["params"]
        for tag in BATCHED_TAGS:
            early = batched_nms(segs, scores, labels, **settings[tag], backend=backend, early_stop=True)
            full = batched_nms(segs, scores, labels, **settings[tag], backend=backend, early_stop=False)
            for a, b in zip(early, full):
                assert torch.equal(a, b) or torch.allclose(a, b, equal_nan=True, rtol=0, atol=0), (case["name"], tag)
        full_dets, full_inds = softnms(segs, scores, p["iou_threshold"], p["sigma"], p["min_score"], 2, backend=backend)
        for k in (1, 5):
            dets, inds = softnms(segs, scores, p["iou_threshold"], p["sigma"], p["min_score"], 2, max_keep=k, backend=backend)
            assert torch.equal(dets, full_dets[:k]) and torch.equal(inds, full_inds[:k]), case["name"]
        full_keep = nms(segs, scores, p["iou_threshold"], backend=backend)
        assert torch.equal(nms(segs, scores, p["iou_threshold"], max_keep=3, backend=backend), full_keep[:3])


def test_early_stop_equals_full_run_torch_small_cases(golden):
    settings, cases = golden
    for case in cases:
        if case["inputs"]["segs"].shape[0] > 50:
            continue
        segs, scores, labels = _inputs(case, torch.device("cpu"))
        for tag in ("config", "hard"):
            early = batched_nms(segs, scores, labels, **settings[tag], backend="torch", early_stop=True)
            full = batched_nms(segs, scores, labels, **settings[tag], backend="torch", early_stop=False)
            assert all(torch.equal(a, b) for a, b in zip(early, full)), (case["name"], tag)


# --------------------------------------------------------------------------------------------
# hand-computed behaviour
# --------------------------------------------------------------------------------------------
def test_two_overlapping_segments_by_hand():
    segs = torch.tensor([[5.0, 15.0], [0.0, 10.0]])
    scores = torch.tensor([0.8, 0.9])
    # IoU = 5 / (10 + 10 + 2e-6 - 5) = 0.33333329 (areas carry the reference's 1e-6)
    assert nms(segs, scores, 0.3, backend="torch").tolist() == [1]
    assert nms(segs, scores, 0.34, backend="torch").tolist() == [1, 0]
    dets, inds = softnms(segs, scores, 0.3, 0.75, 0.001, method=2, backend="torch")
    iou = 5.0 / (20.000002 - 5.0)
    assert inds.tolist() == [1, 0]
    assert dets[:, :2].tolist() == [[0.0, 10.0], [5.0, 15.0]]
    assert dets[0, 2].item() == pytest.approx(0.9, abs=1e-7)
    assert dets[1, 2].item() == pytest.approx(0.8 * math.exp(-iou * iou / 0.75), abs=1e-7)  # 0.68985
    dets1, _ = softnms(segs, scores, 0.3, 0.75, 0.001, method=1, backend="torch")
    assert dets1[1, 2].item() == pytest.approx(0.8 * (1 - iou), abs=1e-7)
    dets0, inds0 = softnms(segs, scores, 0.3, 0.75, 0.001, method=0, backend="torch")
    assert inds0.tolist() == [1]  # score 0 < min_score: removed
    assert dets0.shape == (1, 3)


def test_soft_nms_emits_first_pick_below_min_score_but_hard_wrapper_drops_it():
    segs = torch.tensor([[0.0, 1.0], [5.0, 6.0]])
    scores = torch.tensor([0.0005, 0.0002])
    _, inds = softnms(segs, scores, 0.1, 0.75, 0.001, 2, backend="torch")
    assert inds.tolist() == [0]  # the second one is removed after its (null) decay
    labels = torch.zeros(2, dtype=torch.long)
    out = batched_nms(segs, scores, labels, 0.1, 0.001, 5, use_soft_nms=False, backend="torch")
    assert out[0].shape == (0, 2) and out[1].shape == (0,) and out[2].shape == (0,)


def test_multiclass_runs_per_class_then_sorts_by_score():
    segs = torch.tensor([[0.0, 10.0], [0.0, 10.0], [1.0, 11.0], [50.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 1, 0, 1])
    out_segs, out_scores, out_labels = batched_nms(segs, scores, labels, 0.1, 0.001, 5, use_soft_nms=False, backend="torch")
    # class 0: [1, 11] overlaps [0, 10] (IoU 0.82) and is suppressed; class 1 keeps both
    assert out_labels.tolist() == [0, 1, 1]
    assert out_scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert out_segs.tolist() == [[0.0, 10.0], [0.0, 10.0], [50.0, 60.0]]


def test_seg_voting_weights_by_iou_times_score():
    kept = torch.tensor([[0.0, 10.0]])
    cands = torch.tensor([[0.0, 10.0], [0.0, 9.0], [40.0, 50.0]])
    scores = torch.tensor([0.5, 1.0, 1.0])
    voted = seg_voting(kept, cands, scores, 0.5)
    # weights: 1 x 0.5 = 0.5 and 0.9 x 1.0 = 0.9 (the far one has IoU 0) -> end = (5 + 8.1) / 1.4
    assert voted.tolist()[0] == pytest.approx([0.0, (0.5 * 10 + 0.9 * 9) / 1.4], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    device = _device(backend)
    empty_segs, empty_scores = torch.zeros(0, 2, device=device), torch.zeros(0, device=device)
    labels = torch.zeros(0, dtype=torch.long, device=device)
    segs, scores, out_labels = batched_nms(empty_segs, empty_scores, labels, 0.1, 0.001, 5, backend=backend)
    assert segs.shape == (0, 2) and scores.shape == (0,) and out_labels.dtype == torch.long
    assert segs.device == scores.device == out_labels.device == device
    keep = nms(empty_segs, empty_scores, 0.1, backend=backend)
    assert keep.shape == (0,) and keep.device == device
    dets, inds = softnms(empty_segs, empty_scores, 0.1, 0.75, 0.001, backend=backend)
    assert dets.shape == (0, 3) and inds.shape == (0,) and dets.device == inds.device == device


@pytest.mark.parametrize("method", [0, 1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_candidate_comes_back_as_it_is(backend, method):
    """One candidate, even below ``min_score``: soft NMS emits it unchanged, hard NMS keeps it."""
    device = _device(backend)
    for score in (0.7, 0.0005):
        segs, scores = torch.tensor([[2.0, 5.5]], device=device), torch.tensor([score], device=device)
        dets, inds = softnms(segs, scores, 0.1, 0.75, 0.001, method=method, backend=backend)
        assert inds.tolist() == [0]
        assert torch.equal(dets.cpu(), torch.tensor([[2.0, 5.5, score]]))
        assert nms(segs, scores, 0.1, backend=backend).tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_keep_one_keeps_exactly_the_first_selection(backend):
    device = _device(backend)
    segs = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [2.1, 3.0]], device=device)  # 3 disjoint
    scores = torch.tensor([0.3, 0.9, 0.6, 0.8], device=device)
    assert nms(segs, scores, 0.5, backend=backend).tolist() == [1, 2, 0]
    assert nms(segs, scores, 0.5, max_keep=1, backend=backend).tolist() == [1]
    dets, inds = softnms(segs, scores, 0.5, 0.75, 0.001, method=0, max_keep=1, backend=backend)
    assert inds.tolist() == [1] and dets.shape == (1, 3)
    full_dets, full_inds = softnms(segs, scores, 0.5, 0.75, 0.001, method=0, backend=backend)
    assert full_inds.tolist() == [1, 2, 0] and torch.equal(full_dets[:1], dets)


def test_hard_nms_without_the_extension_keeps_what_the_cpp_nms_keeps(golden, monkeypatch):
    """The public ``nms`` (backend "auto") on a machine without the compiled extension: the
    PyTorch path, with the reference C++'s keeps on every fixture case."""
    _, cases = golden
    monkeypatch.setattr(nms_module, "_nms_cpu", None)
    monkeypatch.setattr(nms_module, "_nms_cuda", None)
    monkeypatch.setattr(nms_module, "_warned_missing_extension", True)
    wrong = [case["name"] for case in cases
             if not torch.equal(nms(*_inputs(case, "cpu")[:2], case["params"]["iou_threshold"]),
                                case["outputs"]["nms"]["keep"])]
    assert wrong == []


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        nms(torch.zeros(3, 3), torch.zeros(3), 0.1)
    with pytest.raises(DataError, match="N = 3"):
        softnms(torch.zeros(3, 2), torch.zeros(4), 0.1, 0.75, 0.001)
    with pytest.raises(ValueError, match="method"):
        softnms(torch.zeros(3, 2), torch.zeros(3), 0.1, 0.75, 0.001, method=3)
    with pytest.raises(ValueError, match="backend"):
        nms(torch.zeros(3, 2), torch.zeros(3), 0.1, backend="fortran")
    with pytest.raises((ValueError, RuntimeError), match="CUDA tensors|not built"):
        nms(torch.zeros(3, 2), torch.zeros(3), 0.1, backend="cuda")  # CPU tensors


def test_missing_extension_falls_back_to_torch_with_one_warning(monkeypatch):
    segs = torch.tensor([[0.0, 10.0], [1.0, 11.0], [20.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    expected = batched_nms(segs, scores, labels, 0.1, 0.001, 5, sigma=0.75, backend="torch")
    monkeypatch.setattr(nms_module, "_nms_cpu", None)
    monkeypatch.setattr(nms_module, "_nms_cuda", None)
    monkeypatch.setattr(nms_module, "_warned_missing_extension", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = batched_nms(segs, scores, labels, 0.1, 0.001, 5, sigma=0.75)
        second = batched_nms(segs, scores, labels, 0.1, 0.001, 5, sigma=0.75)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert available_backends() == ["torch"]
    for a, b, c in zip(first, second, expected):
        assert torch.equal(a, c) and torch.equal(b, c)
    with pytest.raises(RuntimeError, match="not built"):
        nms(segs, scores, 0.1, backend="cpp")


def test_the_backends_this_machine_expects_are_built():
    """Where ``GROUNDNLQ_EXPECT_NMS_BACKENDS`` names backends (CI: ``cpp``; a GPU check:
    ``cpp,cuda``), they must have loaded: otherwise a silently skipped build would turn every
    compiled-backend test above into a skip and the suite would still pass."""
    expected = [name for name in os.environ.get("GROUNDNLQ_EXPECT_NMS_BACKENDS", "").split(",") if name]
    if not expected:
        pytest.skip("GROUNDNLQ_EXPECT_NMS_BACKENDS is not set")
    missing = sorted(set(expected) - set(available_backends()))
    assert not missing, f"NMS backends {missing} expected but not usable (built: {available_backends()})"


# --------------------------------------------------------------------------------------------
# backends against each other on random and adversarial inputs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("other", COMPILED)
def test_backends_agree_on_random_and_adversarial_inputs(other):
    rng = random.Random(20240607)
    device = _device(other)
    for trial in range(2000):
        segs, scores, labels, p = random_problem(rng)
        method = trial % 3
        max_keep = None if trial % 4 == 0 else rng.randint(1, 6)  # mostly early stop (fast)
        d_segs, d_scores = segs.to(device), scores.to(device)
        keep_t = nms(segs, scores, p["iou_threshold"], max_keep=max_keep, backend="torch")
        keep_o = nms(d_segs, d_scores, p["iou_threshold"], max_keep=max_keep, backend=other).cpu()
        assert torch.equal(keep_t, keep_o), trial
        args = (p["iou_threshold"], p["sigma"], p["min_score"], method)
        dets_t, inds_t = softnms(segs, scores, *args, max_keep=max_keep, backend="torch")
        dets_o, inds_o = softnms(d_segs, d_scores, *args, max_keep=max_keep, backend=other)
        assert_same_softnms((dets_o, inds_o), (dets_t, inds_t), method, trial)
        if trial % 10 == 0:
            kw = dict(use_soft_nms=trial % 20 == 0, multiclass=trial % 30 != 0, sigma=p["sigma"], voting_thresh=0.9)
            out_t = batched_nms(segs, scores, labels, p["iou_threshold"], p["min_score"], 5, backend="torch", **kw)
            out_o = batched_nms(d_segs, d_scores, labels.to(device), p["iou_threshold"], p["min_score"], 5, backend=other, **kw)
            for a, b in zip(out_t, out_o):
                assert torch.allclose(a.double(), b.cpu().double(), rtol=1e-6, atol=1e-7, equal_nan=True), trial


@pytest.mark.parametrize("other", COMPILED)
def test_backends_agree_on_nan_scores(other):
    """NaN never wins the reference's strict `<` argmax scan unless it is at the current slot."""
    device = _device(other)
    for segs, scores in nan_score_problems():
        for method in range(3):
            want = softnms(segs, scores, 0.1, 0.5, 0.001, method, backend="torch")
            got = softnms(segs.to(device), scores.to(device), 0.1, 0.5, 0.001, method, backend=other)
            assert_same_softnms(got, want, method)
        keep_o = nms(segs.to(device), scores.to(device), 0.1, backend=other).cpu()
        assert torch.equal(nms(segs, scores, 0.1, backend="torch"), keep_o)


@pytest.mark.parametrize("other", COMPILED)
@pytest.mark.parametrize("num", [300, 1100])
def test_backends_agree_on_problems_larger_than_a_thread_block(other, num):
    """The CUDA kernel works in chunks of 256 candidates (argmax, scans, compaction); the random
    cases above never leave the first chunk."""
    device = _device(other)
    segs, scores = large_problem(num, seed=num)
    for method, min_score, max_keep in [(2, 0.001, None), (1, 0.0011, None), (0, 0.001, 50), (2, 0.0, 20)]:
        args = (0.1, 0.75, min_score, method)
        want = softnms(segs, scores, *args, max_keep=max_keep, backend="torch")
        got = softnms(segs.to(device), scores.to(device), *args, max_keep=max_keep, backend=other)
        assert_same_softnms(got, want, method, (method, min_score))
    keep_t = nms(segs, scores, 0.3, backend="torch")
    assert torch.equal(keep_t, nms(segs.to(device), scores.to(device), 0.3, backend=other).cpu())


@pytest.mark.skipif("cuda" not in available_backends() or "cpp" not in available_backends(),
                    reason="needs the CUDA kernel and the C++ extension")
@pytest.mark.parametrize("method", [0, 1, 2])
def test_cuda_softnms_batched_equals_one_problem_at_a_time(method):
    """``_nms_cuda.softnms_batched``: one block per problem, empty problems included; each
    problem's rows equal the C++ soft NMS of that problem alone (local indices)."""
    problems, offsets = batched_problems(seed=7 + method, count=40, large_size=700)
    segs = torch.cat([s for s, _ in problems]).cuda()
    scores = torch.cat([s for _, s in problems]).cuda()
    for max_keep in (-1, 5):
        result = nms_module._nms_cuda.softnms_batched(segs, scores, offsets, 0.3, 0.5, 0.001, method, max_keep)
        assert_batched_rows_match(
            result, offsets, problems,
            lambda p_segs, p_scores: nms_module._nms_cpu.softnms(p_segs, p_scores, 0.3, 0.5, 0.001, method, max_keep),
            method, max_keep)
