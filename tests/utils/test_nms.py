"""NMS: every backend against the reference's fixtures, early stop, and backends against each other.

Fixture cases (../shared/golden/nms/cases.pt, 281 cases from the reference's C++ and Python):
hard-NMS keep indices and soft-NMS methods 0/1 must match bitwise, method 2 indices exactly and
decayed scores within 1e-7 (the gaussian's ``exp`` may round 1 ulp apart), ``batched_nms``
labels exactly (NaN windows where the reference's voting divides by zero). Exact score ties
included: the hard NMS orders them with torch's unstable sort like the reference (50 equal scores
keep 38, 28, 29, 30, ...), soft NMS by the reference's working-array order. No case needs an
xfail. The CUDA backend runs the same tests when a GPU and the kernel are present.
"""
import inspect
import itertools
import math
import os
import random
import warnings

import pytest
import torch

from libs.core.errors import DataError
from libs.utils import nms as nms_module
from libs.utils.nms import available_backends, batched_nms, nms, seg_voting, softnms
from tests.conftest import fixture_path
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
    data = torch.load(fixture_path("golden", "nms", "cases.pt"), weights_only=True)
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


# --------------------------------------------------------------------------------------------
# dispatch: which backend runs, what it is handed, and the wrapper's own rules
# --------------------------------------------------------------------------------------------
class RecordingKernel:
    """Stands in for ``_nms_cuda``: records each call's arguments and answers with the PyTorch
    backend's results, so the CUDA dispatch can be checked on any machine."""

    def __init__(self):
        self.calls = []

    def nms(self, segs, scores, iou_threshold, max_keep):
        self.calls.append(("nms", segs, scores, iou_threshold, max_keep))
        return nms_module._nms_torch(segs, scores, iou_threshold, None if max_keep < 0 else max_keep)

    def softnms(self, segs, scores, iou_threshold, sigma, min_score, method, max_keep):
        self.calls.append(("softnms", segs, scores, iou_threshold, sigma, min_score, method, max_keep))
        return nms_module._softnms_torch(segs, scores, iou_threshold, sigma, min_score, method,
                                         None if max_keep < 0 else max_keep)


def test_backend_resolution(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    monkeypatch.setattr(nms_module, "_nms_cpu", object())
    monkeypatch.setattr(nms_module, "_nms_cuda", RecordingKernel())
    resolve = nms_module._resolve_backend
    assert [resolve("auto", cuda), resolve("auto", cpu), resolve("cpp", cuda), resolve("torch", cuda)] == [
        "cuda", "cpp", "cpp", "torch"]
    assert resolve("cuda", cuda) == "cuda"
    with pytest.raises(ValueError, match=r"^NMS backend 'cuda' needs CUDA tensors, got tensors on cpu$"):
        resolve("cuda", cpu)
    monkeypatch.setattr(nms_module, "_nms_cuda", None)
    assert resolve("auto", cuda) == "cpp"
    with pytest.raises(RuntimeError, match=r"^NMS backend 'cuda' requested but libs.utils._nms_cuda is not built$"):
        resolve("cuda", cuda)
    monkeypatch.setattr(nms_module, "_nms_cpu", None)
    with pytest.raises(RuntimeError, match=r"^NMS backend 'cpp' requested but libs.utils._nms_cpu is not built$"):
        resolve("cpp", cpu)
    monkeypatch.setattr(nms_module, "_warned_missing_extension", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve("auto", cuda) == resolve("auto", cpu) == "torch"
    assert [str(w.message) for w in caught] == [
        "the C++ NMS extension libs.utils._nms_cpu is not built; NMS falls back to the pure-PyTorch "
        "implementation (same results, slower). Build it with `pip install -e . --no-build-isolation`."]
    assert caught[0].category is RuntimeWarning


def test_available_backends_name_what_loaded(monkeypatch):
    monkeypatch.setattr(nms_module, "_nms_cpu", object())
    monkeypatch.setattr(nms_module, "_nms_cuda", RecordingKernel())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_backends() == ["torch", "cpp", "cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a kernel built, no GPU
    assert available_backends() == ["torch", "cpp"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(nms_module, "_nms_cuda", None)
    monkeypatch.setattr(nms_module, "_nms_cpu", None)
    assert available_backends() == ["torch"]


def test_the_cuda_path_hands_every_argument_to_the_kernel(monkeypatch):
    kernel = RecordingKernel()
    monkeypatch.setattr(nms_module, "_nms_cuda", kernel)
    monkeypatch.setattr(nms_module, "_resolve_backend", lambda backend, device: "cuda" if backend == "auto" else backend)
    segs = torch.tensor([[0.0, 1.0], [0.2, 1.2], [3.0, 4.0]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    keep = nms(segs, scores, 0.5)
    assert torch.equal(keep, nms(segs, scores, 0.5, backend="torch"))
    assert torch.equal(nms(segs, scores, 0.5, max_keep=1), keep[:1])
    dets, inds = softnms(segs, scores, 0.5, 0.75, 0.001, method=1, max_keep=2)
    want = softnms(segs, scores, 0.5, 0.75, 0.001, method=1, max_keep=2, backend="torch")
    assert torch.equal(dets, want[0]) and torch.equal(inds, want[1])
    softnms(segs, scores, 0.5, 0.75, 0.001)
    (_, s0, c0, thr0, k0), (_, _, _, _, k1), soft, soft_all = kernel.calls
    assert s0.dtype == c0.dtype == torch.float32 and s0.is_contiguous() and (thr0, k0, k1) == (0.5, -1, 1)
    assert soft[0] == "softnms" and soft[3:] == (0.5, 0.75, 0.001, 1, 2) and soft[1].dtype == torch.float32
    assert soft_all[3:] == (0.5, 0.75, 0.001, 2, -1)  # gaussian by default, no limit


@pytest.mark.parametrize("use_soft_nms", [True, False])
def test_early_stop_asks_each_nms_for_max_seg_num_selections_only(monkeypatch, use_soft_nms):
    asked = []
    real_nms, real_softnms = nms_module.nms, nms_module.softnms
    monkeypatch.setattr(nms_module, "nms", lambda *a, **k: asked.append((k["max_keep"], k["backend"])) or real_nms(*a, **k))
    monkeypatch.setattr(nms_module, "softnms",
                        lambda *a, **k: asked.append((k["max_keep"], k["backend"])) or real_softnms(*a, **k))
    segs, scores, labels, _ = random_problem(random.Random(4))
    labels = torch.arange(len(scores)) % 2  # two classes: two calls
    for early_stop, max_seg_num, want in ((True, 3, 3), (True, 1, 1), (False, 3, None), (True, 0, None)):
        asked.clear()
        batched_nms(segs, scores, labels, 0.3, 0.001, max_seg_num, use_soft_nms=use_soft_nms, early_stop=early_stop,
                    backend="torch")
        assert asked == [(want, "torch")] * len(labels.unique()), (early_stop, max_seg_num)
    asked.clear()
    batched_nms(segs, scores, labels, 0.3, 0.001, 3, use_soft_nms=use_soft_nms, backend="torch")  # the default
    assert asked == [(3, "torch")] * 2
    assert batched_nms(segs, scores, labels, 0.3, 0.001, 3, use_soft_nms=use_soft_nms, backend="torch")[0].shape[0] <= 3


def test_batched_nms_behaves_as_its_default_arguments_say():
    """Left out, sigma is 0.5 and voting_thresh 0.75 (the reference's), for one query or many."""
    segs = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [20.0, 30.0]])  # overlaps: sigma and voting matter
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.zeros(4, dtype=torch.long)
    args = (segs, scores, labels, 0.3, 0.001, 20)
    for function, wrap in ((batched_nms, lambda r: r), (nms_module.batched_nms_of_queries, lambda r: r[0])):
        call = (lambda **k: function(*args, **k)) if function is batched_nms else \
            (lambda **k: function([args[:3]], *args[3:], **k))
        soft = wrap(call(backend="torch"))
        assert all(torch.equal(a, b) for a, b in zip(soft, wrap(call(sigma=0.5, backend="torch"))))
        assert not torch.equal(soft[1], wrap(call(sigma=1.5, backend="torch"))[1])
        voted = wrap(call(multiclass=False, backend="torch"))
        assert torch.equal(voted[0], wrap(call(multiclass=False, voting_thresh=0.75, backend="torch"))[0])
        assert not torch.equal(voted[0], wrap(call(multiclass=False, voting_thresh=0.25, backend="torch"))[0])


def test_batched_nms_of_queries_hands_every_argument_on(monkeypatch):
    seen = []
    real = nms_module.batched_nms
    monkeypatch.setattr(nms_module, "batched_nms", lambda *a, **k: seen.append((a[3:], k)) or real(*a, **k))
    segs, scores, labels, _ = random_problem(random.Random(2))
    nms_module.batched_nms_of_queries([(segs, scores, labels)] * 2, 0.4, 0.01, 7, use_soft_nms=False,
                                      multiclass=False, sigma=0.3, voting_thresh=0.6, backend="torch", early_stop=False)
    assert seen == [((0.4, 0.01, 7), dict(use_soft_nms=False, multiclass=False, sigma=0.3, voting_thresh=0.6,
                                          backend="torch", early_stop=False))] * 2
    seen.clear()
    nms_module.batched_nms_of_queries([(segs, scores, labels)], 0.4, 0.01, 7)
    assert seen == [((0.4, 0.01, 7), dict(use_soft_nms=True, multiclass=True, sigma=0.5, voting_thresh=0.75,
                                          backend="auto", early_stop=True))]


def test_batched_nms_defaults_are_the_references():
    params = inspect.signature(batched_nms).parameters
    assert {name: params[name].default for name in ("use_soft_nms", "multiclass", "sigma", "voting_thresh")} == {
        "use_soft_nms": True, "multiclass": True, "sigma": 0.5, "voting_thresh": 0.75}
    assert params["early_stop"].default is True and params["backend"].default == "auto"
    assert inspect.signature(softnms).parameters["backend"].default == "auto"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_and_float16_inputs_give_the_float32_results(backend):
    device = _device(backend)
    segs, scores, labels, _ = random_problem(random.Random(11))
    segs, scores, labels = segs.to(device), scores.to(device), labels.to(device)
    for dtype in (torch.float64, torch.float16):
        low = (segs.to(dtype), scores.to(dtype))
        rounded = (low[0].float(), low[1].float())  # what the half inputs hold, in float32
        assert torch.equal(nms(*low, 0.3, backend=backend), nms(*rounded, 0.3, backend=backend))
        got, want = softnms(*low, 0.3, 0.75, 0.001, backend=backend), softnms(*rounded, 0.3, 0.75, 0.001, backend=backend)
        assert got[0].dtype == torch.float32 and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        voted = batched_nms(*low, labels, 0.3, 0.001, 5, multiclass=False, voting_thresh=0.5, backend=backend)
        assert voted[0].dtype == torch.float32
        assert torch.allclose(voted[0], batched_nms(*rounded, labels, 0.3, 0.001, 5, multiclass=False,
                                                    voting_thresh=0.5, backend=backend)[0], atol=1e-5)


def test_integer_windows_are_rejected():
    with pytest.raises(DataError, match=r"^NMS segs and scores must be floating point, got torch.int64 / torch.float32$"):
        nms(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3), 0.1)
    with pytest.raises(DataError, match=r"^NMS segs and scores must be floating point, got torch.float32 / torch.int64$"):
        softnms(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 0.1, 0.75, 0.001)


def test_hard_wrapper_filters_scores_only_above_a_positive_min_score():
    """The reference's wrapper drops ``score <= min_score`` only when ``min_score > 0``."""
    segs = torch.tensor([[0.0, 1.0], [5.0, 6.0], [10.0, 11.0]])
    scores = torch.tensor([0.5, 0.0, 0.001])
    labels = torch.zeros(3, dtype=torch.long)
    kept = batched_nms(segs, scores, labels, 0.1, 0.0, 5, use_soft_nms=False, backend="torch")
    assert kept[1].tolist() == pytest.approx([0.5, 0.001, 0.0])
    kept = batched_nms(segs, scores, labels, 0.1, 0.001, 5, use_soft_nms=False, backend="torch")
    assert kept[1].tolist() == [0.5]  # 0.001 is not above 0.001


def test_no_voting_at_a_zero_voting_threshold():
    segs = torch.tensor([[0.0, 10.0], [0.0, 9.0], [40.0, 50.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    plain = batched_nms(segs, scores, labels, 0.5, 0.001, 5, use_soft_nms=False, multiclass=False, voting_thresh=0.0,
                        backend="torch")
    assert plain[0].tolist() == [[0.0, 10.0], [40.0, 50.0]]  # rows of the input, not averages


@pytest.mark.parametrize("max_keep", [0, -3])
def test_max_keep_below_one_means_no_limit(max_keep):
    segs = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    scores = torch.tensor([0.3, 0.9, 0.6])
    for backend in available_backends():
        if backend == "cuda":
            continue
        assert nms(segs, scores, 0.5, max_keep=max_keep, backend=backend).tolist() == [1, 2, 0]
        assert softnms(segs, scores, 0.5, 0.75, 0.001, max_keep=max_keep, backend=backend)[1].tolist() == [1, 2, 0]


def test_empty_inputs_stay_on_their_device():
    """The empties come back on the inputs' device (here the meta device: no data needed)."""
    segs, scores = torch.zeros(0, 2, device="meta"), torch.zeros(0, device="meta")
    labels = torch.zeros(0, dtype=torch.int32, device="meta")
    keep = nms(segs, scores, 0.1)
    dets, inds = softnms(segs, scores, 0.1, 0.75, 0.001)
    out = batched_nms(segs, scores, labels, 0.1, 0.001, 5)
    assert keep.device.type == inds.device.type == dets.device.type == "meta"
    assert keep.dtype == inds.dtype == torch.long and dets.shape == (0, 3)
    assert [t.device.type for t in out] == ["meta"] * 3 and out[2].dtype == torch.int32
    assert out[0].shape == (0, 2) and out[1].dtype == torch.float32


class BatchedKernel(RecordingKernel):
    """Also stands in for ``softnms_batched``: each problem's rows at its offset, as the kernel lays them out."""

    def softnms_batched(self, segs, scores, offsets, iou_threshold, sigma, min_score, method, max_keep):
        self.calls.append(("softnms_batched", offsets.tolist(), iou_threshold, sigma, min_score, method, max_keep))
        dets, inds = torch.full((len(scores), 3), float("nan")), torch.full((len(scores),), -1)
        counts = []
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            d, i = nms_module._softnms_torch(segs[start:end], scores[start:end], iou_threshold, sigma, min_score,
                                             method, None if max_keep < 0 else max_keep)
            dets[start:start + len(i)], inds[start:start + len(i)] = d, i
            counts.append(len(i))
        return dets, inds, torch.tensor(counts)


@pytest.mark.parametrize("early_stop,max_seg_num", [(True, 5), (False, 5), (True, 50), (True, 1), (True, 0)])
def test_all_queries_in_one_launch_equal_query_by_query(monkeypatch, early_stop, max_seg_num):
    rng = random.Random(9)
    problems = [random_problem(rng)[:3] for _ in range(7)]
    problems[2] = (torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    problems = [(segs, scores, torch.full_like(labels, 3)) for segs, scores, labels in problems]  # one class
    args = (0.3, 0.001, max_seg_num)
    want = [batched_nms(*p, *args, sigma=0.75, early_stop=early_stop, backend="torch") for p in problems]
    kernel = BatchedKernel()
    monkeypatch.setattr(nms_module, "_nms_cuda", kernel)
    monkeypatch.setattr(nms_module, "_resolve_backend", lambda backend, device: "cuda")
    got = nms_module.batched_nms_of_queries(problems, *args, sigma=0.75, early_stop=early_stop)
    offsets = [0] + list(itertools.accumulate(len(p[1]) for p in problems))
    limit = max_seg_num if early_stop and max_seg_num > 0 else -1
    assert kernel.calls == [("softnms_batched", offsets, 0.3, 0.75, 0.001, 2, limit)]
    for a, b in zip(got, want):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert a[2].tolist() == [3] * len(a[2])


def test_one_launch_only_where_each_query_is_one_soft_nms_problem(monkeypatch):
    kernel = BatchedKernel()
    monkeypatch.setattr(nms_module, "_nms_cuda", kernel)
    monkeypatch.setattr(nms_module, "_resolve_backend", lambda backend, device: "cuda")
    segs, scores, labels, _ = random_problem(random.Random(5))
    two_classes = [(segs, scores, torch.arange(len(scores)) % 2)]
    one_class = [(segs, scores, torch.zeros_like(labels))]
    cases = [  # (problems, keyword arguments, one launch?)
        (one_class, {}, True),
        (one_class, {"use_soft_nms": False}, False),
        (two_classes, {}, False),
        (two_classes, {"multiclass": False, "voting_thresh": 0.0}, True),
        (two_classes, {"multiclass": False, "voting_thresh": 0.9}, False),
        ([], {}, False),
        ([(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * 2, {}, True),  # no candidates
    ]
    for problems, kwargs, batched in cases:
        kernel.calls.clear()
        results = nms_module.batched_nms_of_queries(problems, 0.3, 0.001, 5, **kwargs)
        assert len(results) == len(problems)
        assert [c[0] for c in kernel.calls if c[0] == "softnms_batched"] == (["softnms_batched"] if batched else []), kwargs
