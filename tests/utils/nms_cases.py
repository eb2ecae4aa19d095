"""NMS problems and comparisons shared by the NMS tests (test_nms.py: the backends;
test_nms_cuda_emulated.py: the CUDA kernels on the CPU)."""
import math
import random

import torch

from bench.bench_nms import model_like_candidates

SCORE_ATOL = 1e-7  # decayed soft-NMS scores (method 2): the gaussian's exp may round 1 ulp apart


def random_problem(rng: random.Random):
    """Small inputs rich in the hard cases: exact ties, duplicates, zero lengths, nesting."""
    n = rng.randint(1, 24)
    kind = rng.choice(["uniform", "ties", "duplicates", "zero_length", "nested", "below_min"])
    segs = []
    for _ in range(n):
        centre, length = rng.uniform(-5, 60), math.exp(rng.uniform(math.log(0.01), math.log(40)))
        if kind == "zero_length" and rng.random() < 0.5:
            length = 0.0
        segs.append([centre - length / 2, centre + length / 2])
    if kind == "duplicates":
        segs = [list(segs[rng.randrange(min(3, n))]) for _ in range(n)]
    if kind == "nested":
        segs = [[10.0 - k * 0.7, 12.0 + k * 0.9] for k in range(n)]
    if kind == "ties":
        scores = [rng.choice([0.2, 0.5, 0.5, 0.9]) for _ in range(n)]
    elif kind == "below_min":
        scores = [rng.choice([0.0005, 0.001, 0.0011, 0.3]) for _ in range(n)]
    else:
        scores = [rng.random() for _ in range(n)]
    params = {
        "iou_threshold": rng.choice([0.1, 0.3, 0.5, 0.7]),
        "sigma": rng.choice([0.3, 0.5, 0.75]),
        "min_score": rng.choice([0.0, 0.001, 0.01, 0.1]),
    }
    labels = torch.tensor([rng.randrange(2) for _ in range(n)], dtype=torch.long)
    return torch.tensor(segs, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), labels, params


def large_problem(num: int, seed: int):
    """More candidates than one CUDA block's 256 threads: the benchmark's decoder-like ones
    (pyramid levels of grid windows, most scores near the classifier prior, so many fall below
    ``min_score`` once decayed), with exact ties added."""
    segs, scores, _ = model_like_candidates(num, seed)
    scores[: num // 10] = scores[num // 10: 2 * (num // 10)]  # exact ties
    return segs, scores


def nan_score_problems():
    """Six windows (a zero-length and a reversed one among them) under three score vectors with
    NaNs: at a later slot, at the first slot, and two at once. NaN never wins the reference's
    strict `<` argmax scan unless it is at the current slot."""
    segs = torch.tensor([[0.0, 1.0], [0.5, 2.0], [3.0, 4.0], [3.5, 5.0], [0.0, 0.0], [2.0, 1.0]])
    nan = float("nan")
    for raw in ([0.5, nan, 0.9, 0.3, 0.2, 0.4], [nan, 0.5, 0.9, 0.3, 0.2, 0.4], [0.5, 0.1, 0.9, nan, nan, 0.4]):
        yield segs, torch.tensor(raw)


def batched_problems(seed: int, count: int, large_size: int):
    """``count`` small random problems for one batched launch, with empty ones at 5 and at the end
    and a large one at 17: ``(problems, offsets (B + 1,))``, problems as ``(segs, scores)``."""
    rng = random.Random(seed)
    empty = (torch.zeros(0, 2), torch.zeros(0))
    problems = [random_problem(rng)[:2] for _ in range(count)]
    problems[5] = empty
    problems[17] = large_problem(large_size, seed=3)
    problems.append(empty)
    offsets = torch.tensor([0] + [segs.shape[0] for segs, _ in problems]).cumsum(0)
    return problems, offsets


def assert_same_softnms(got, want, method, context=None):
    """Soft-NMS results ``(dets, inds)`` agree: indices and windows exactly (windows are copies of
    input rows), scores exactly for methods 0 and 1 and within SCORE_ATOL for the gaussian; NaN
    scores must stand where the other side has them."""
    dets, inds = (t.cpu() for t in got)
    want_dets, want_inds = (t.cpu() for t in want)
    assert torch.equal(inds, want_inds), context
    assert torch.equal(dets[:, :2], want_dets[:, :2]), context
    atol = SCORE_ATOL if method == 2 else 0.0
    assert torch.allclose(dets[:, 2], want_dets[:, 2], rtol=0, atol=atol, equal_nan=True), context


def assert_batched_rows_match(result, offsets, problems, expected, method, context=None):
    """Each problem's rows of a batched soft NMS ``(dets, local inds, counts)`` equal
    ``expected(segs, scores)``, the soft NMS of that problem alone."""
    dets, inds, counts = (t.cpu() for t in result)
    for b, (segs, scores) in enumerate(problems):
        want = expected(segs, scores)
        start, count = int(offsets[b]), int(counts[b])
        assert count == want[1].numel(), (b, context)
        assert_same_softnms((dets[start:start + count], inds[start:start + count]), want, method, (b, context))
