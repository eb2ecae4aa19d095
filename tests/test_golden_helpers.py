"""The golden comparison helpers accept float32 noise and near-ties, and nothing more."""
import pytest
import torch

from tests.golden import TOLERANCES, assert_close, assert_same_candidates, assert_same_results, excess


def result(scores, segments, query_id="a_0"):
    return {"video_id": "v", "query_id": query_id, "segments": torch.tensor(segments),
            "scores": torch.tensor(scores), "labels": torch.zeros(len(scores), dtype=torch.long)}


def test_tolerance_is_absolute_plus_relative():
    atol, rtol = TOLERANCES["result_scores"]
    want = torch.tensor([0.0, 0.5], dtype=torch.float64)
    bound = torch.tensor([atol, atol + rtol * 0.5], dtype=torch.float64)
    ratio, gap = excess(want + bound, want, "result_scores")
    assert ratio == pytest.approx(1.0, rel=1e-9) and gap == pytest.approx(atol + rtol * 0.5, rel=1e-9)
    with pytest.raises(AssertionError, match="result_scores: gap"):
        assert_close(want + 1.01 * bound, want, "result_scores")
    assert_close(want + 1.99 * bound, want, "result_scores", scale=2.0)
    masked = torch.tensor([True, False])
    assert_close(want + torch.tensor([0.0, 1.0]), want, "result_scores", mask=masked)


def test_results_may_swap_rows_only_where_the_reference_scores_tie():
    ref = [result([0.9, 0.5 + 1e-7, 0.5, 0.1], [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])]
    tied_swap = [result([0.9, 0.5 + 1e-7, 0.5, 0.1], [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0], [6.0, 7.0]])]
    assert_same_results(tied_swap, ref)
    clear_swap = [result([0.9, 0.5 + 1e-7, 0.5, 0.1], [[2.0, 3.0], [0.0, 1.0], [4.0, 5.0], [6.0, 7.0]])]
    with pytest.raises(AssertionError):
        assert_same_results(clear_swap, ref)
    with pytest.raises(AssertionError, match="matches no golden row"):
        assert_same_results([result([0.9, 0.5, 0.5, 0.1], [[0.0, 1.01], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])], ref)
    with pytest.raises(AssertionError):
        assert_same_results([result([0.9], [[0.0, 1.0]])], ref)
    with pytest.raises(AssertionError):
        assert_same_results([result([0.9, 0.5 + 1e-7, 0.5, 0.1], ref[0]["segments"].tolist(), "a_1")], ref)


def test_candidates_compare_as_sets_with_a_one_to_one_match():
    ref = {"segments": torch.tensor([[0.0, 1.0], [0.0, 1.00005], [3.0, 4.0]]),
           "scores": torch.tensor([0.5, 0.5, 0.2]), "labels": torch.zeros(3, dtype=torch.long)}
    permuted = {key: value[[2, 1, 0]] for key, value in ref.items()}
    assert_same_candidates(permuted, ref)
    # each of the first two rows is within tolerance of both golden rows: a matching still exists
    both_near = dict(ref, segments=torch.tensor([[0.0, 1.00005], [0.0, 1.0], [3.0, 4.0]]))
    assert_same_candidates(both_near, ref)
    duplicated = dict(ref, segments=torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(AssertionError):
        assert_same_candidates(duplicated, ref)
    with pytest.raises(AssertionError):
        assert_same_candidates(dict(ref, labels=torch.tensor([0, 0, 1])), ref)
