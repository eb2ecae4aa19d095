"""NMS problems shared by the NMS tests: small random and adversarial ones, and large ones."""
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
