"""The CUDA NMS kernels (csrc/nms_cuda_kernels.cuh) run on the CPU under an emulation of CUDA's
threads (tests/utils/emulated_cuda_nms.py): against the reference's fixtures and the PyTorch
backend, on every machine with a C++ compiler. test_nms.py runs the real kernel where a GPU is.

Two builds: 64 threads per block (two warps; problems above 64 candidates take several chunks in
the argmax, the scans and the compaction) and the kernel's own 256. The emulation changes which
thread moves first at every step (at random, or one warp running ahead of the others), so a race
shows as a wrong result, and a barrier reached from different lines or never filled fails the
call. Checked by breaking the kernel on purpose: this file fails (or crashes) without any one of
eight of the kernels' twelve barriers (the other four order nothing that later barriers do not
already order), with the argmax's tie rule reversed, with a shuffle step left out, or with the
movers taken in ascending order.
"""
import ctypes
import os
import random
import re
import sys

import pytest
import torch

from libs.utils.nms import nms, softnms
from tests.conftest import fixture_path
from tests.utils.emulated_cuda_nms import HERE, build, compile_library, find_compiler
from tests.utils.nms_cases import (
    SCORE_ATOL,
    assert_batched_rows_match,
    assert_same_softnms,
    batched_problems,
    large_problem,
    nan_score_problems,
    random_problem,
)

BROKEN_KERNELS = os.path.join(HERE, "cuda_emulation", "broken_kernels.cpp")


@pytest.fixture(scope="module")
def compiler():
    if not sys.platform.startswith("linux"):
        pytest.skip("the CUDA emulation runs its threads as glibc ucontext fibers (Linux)")
    found = find_compiler()
    if not found:
        pytest.skip("no C++ compiler ($CXX, c++ or g++) to build the emulated CUDA kernels")
    return found


@pytest.fixture(scope="module")
def kernels(compiler, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("emulated_cuda_nms"))
    return {threads: build(threads, out, compiler) for threads in (64, 256)}


@pytest.fixture(scope="module")
def cases():
    return torch.load(fixture_path("golden", "nms", "cases.pt"), weights_only=True)["cases"]


@pytest.mark.parametrize("threads", [64, 256])
def test_hard_nms_kernel_matches_the_reference_fixtures(kernels, cases, threads):
    kernel = kernels[threads]
    for case in cases:
        segs, scores = case["inputs"]["segs"], case["inputs"]["scores"]
        keep = kernel.nms(segs, scores, case["params"]["iou_threshold"])
        assert torch.equal(keep, case["outputs"]["nms"]["keep"]), case["name"]


def test_soft_nms_kernel_matches_the_reference_fixtures(kernels, cases):
    """Each fixture case under one of the three methods in turn; problems of over 100 candidates
    stop after 40 selections (early stop is exact, so the reference's first 40 rows)."""
    kernel = kernels[64]
    for number, case in enumerate(cases):
        segs, scores, p = case["inputs"]["segs"], case["inputs"]["scores"], case["params"]
        method = number % 3
        ref = case["outputs"][f"softnms_method{method}"]
        limit = 40 if segs.shape[0] > 100 else -1
        got = kernel.softnms(segs, scores, p["iou_threshold"], p["sigma"], p["min_score"], method, limit)
        want = (ref["dets"], ref["inds"]) if limit < 0 else (ref["dets"][:limit], ref["inds"][:limit])
        assert_same_softnms(got, want, method, case["name"])


def test_kernels_agree_with_torch_on_random_and_adversarial_inputs(kernels):
    rng = random.Random(11)
    kernel = kernels[64]
    for trial in range(300):
        segs, scores, _, p = random_problem(rng)
        method = trial % 3
        max_keep = -1 if trial % 2 == 0 else rng.randint(1, 6)
        torch_keep = None if max_keep < 0 else max_keep
        want_keep = nms(segs, scores, p["iou_threshold"], max_keep=torch_keep, backend="torch")
        assert torch.equal(kernel.nms(segs, scores, p["iou_threshold"], max_keep), want_keep), trial
        args = (p["iou_threshold"], p["sigma"], p["min_score"], method)
        want = softnms(segs, scores, *args, max_keep=torch_keep, backend="torch")
        assert_same_softnms(kernel.softnms(segs, scores, *args, max_keep), want, method, trial)


def test_kernels_agree_with_torch_on_nan_scores(kernels):
    kernel = kernels[64]
    for segs, scores in nan_score_problems():
        for method in range(3):
            want = softnms(segs, scores, 0.1, 0.5, 0.001, method, backend="torch")
            assert_same_softnms(kernel.softnms(segs, scores, 0.1, 0.5, 0.001, method), want, method)
        assert torch.equal(kernel.nms(segs, scores, 0.1), nms(segs, scores, 0.1, backend="torch"))


@pytest.mark.parametrize("threads", [64, 256])
def test_kernels_on_problems_of_several_chunks(kernels, threads):
    """Model-like candidates with exact ties, many more than a block's threads: hundreds of
    selections and removals, each compaction moving entries across chunks."""
    kernel = kernels[threads]
    segs, scores = large_problem(1100, seed=1100)
    for method, min_score, max_keep in [(2, 0.001, -1), (1, 0.0011, 60), (0, 0.001, 60)]:
        args = (0.1, 0.75, min_score, method)
        want = softnms(segs, scores, *args, max_keep=None if max_keep < 0 else max_keep, backend="torch")
        assert_same_softnms(kernel.softnms(segs, scores, *args, max_keep), want, method, (method, min_score))
    assert torch.equal(kernel.nms(segs, scores, 0.3), nms(segs, scores, 0.3, backend="torch"))


@pytest.mark.parametrize("method", [0, 1, 2])
def test_batched_soft_nms_kernel_equals_one_problem_at_a_time(kernels, method):
    """One block per problem, empty problems included; each problem's rows (local indices) equal
    the PyTorch soft NMS of that problem alone."""
    kernel = kernels[64]
    problems, offsets = batched_problems(seed=7 + method, count=24, large_size=300)
    segs = torch.cat([s for s, _ in problems])
    scores = torch.cat([s for _, s in problems])
    for max_keep in (-1, 5):
        result = kernel.softnms_batched(segs, scores, offsets, 0.3, 0.5, 0.001, method, max_keep)
        assert_batched_rows_match(
            result, offsets, problems,
            lambda p_segs, p_scores: softnms(p_segs, p_scores, 0.3, 0.5, 0.001, method,
                                             max_keep=None if max_keep < 0 else max_keep, backend="torch"),
            method, max_keep)


@pytest.mark.parametrize("test_cfg", [
    {"nms_method": "soft", "multiclass_nms": True, "max_seg_num": 5, "nms_early_stop": True},
    {"nms_method": "soft", "multiclass_nms": False, "voting_thresh": 0.0, "max_seg_num": 50, "nms_early_stop": False},
])
def test_postprocess_of_a_batch_in_one_launch_equals_query_by_query(kernels, monkeypatch, test_cfg):
    """What evaluation runs on a GPU: every query's soft NMS in one ``softnms_batched`` launch
    (the emulated kernel standing in for the CUDA one) gives the C++ NMS's results query by query,
    empty queries included."""
    import libs.utils.nms as nms_module
    from libs.evaluation.postprocess import postprocess

    cfg = {"iou_threshold": 0.1, "min_score": 0.001, "nms_sigma": 0.75, "voting_thresh": 0.9, **test_cfg}
    problems, _ = batched_problems(seed=3, count=20, large_size=300)
    candidates = [{"segments": segs, "scores": scores, "labels": torch.zeros(len(scores), dtype=torch.long)}
                  for segs, scores in problems]
    meta = [{"video_id": "v", "query_id": f"q_{i}", "duration": 500.0, "fps": 30, "feat_stride": 16.0,
             "feat_num_frames": 16.0} for i in range(len(problems))]
    want = postprocess(candidates, meta, {**cfg, "nms_backend": "cpp"})
    launches = []

    class OneLaunch:
        def softnms_batched(self, *args):
            launches.append(args[2].tolist())
            return kernels[256].softnms_batched(*args)

    monkeypatch.setattr(nms_module, "_nms_cuda", OneLaunch())
    monkeypatch.setattr(nms_module, "_resolve_backend", lambda backend, device: "cuda")
    got = postprocess(candidates, meta, cfg)
    assert len(launches) == 1 and len(launches[0]) == len(problems) + 1
    assert any(len(scores) == 0 for _, scores in problems)
    for a, b in zip(got, want):
        assert a["query_id"] == b["query_id"] and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["segments"], b["segments"])
        assert torch.allclose(a["scores"], b["scores"], rtol=0, atol=SCORE_ATOL)


def test_the_emulation_reports_barrier_mistakes(compiler, tmp_path):
    """The checks these tests lean on: a block split across two __syncthreads calls, and a
    thread that skips one, are errors of the launch, not a silent pass or a hang."""
    library = compile_library(BROKEN_KERNELS, str(tmp_path / "broken.so"), compiler)
    run_broken_kernel = ctypes.CDLL(library).run_broken_kernel
    run_broken_kernel.restype = ctypes.c_char_p
    assert re.fullmatch(r"block 0: __syncthreads reached from different lines: \d+ and \d+",
                        run_broken_kernel(0).decode())
    assert re.fullmatch(r"block 0: deadlock: 1 of 64 threads exited, thread \d+ waits forever at the barrier of line \d+",
                        run_broken_kernel(1).decode())
