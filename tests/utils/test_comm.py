"""Leaving the process group: a completed run waits for every rank first, a failed one does not."""
import pytest

from libs.utils import comm


def _record_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(comm, "is_distributed", lambda: True)
    monkeypatch.setattr(comm.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(comm.dist, "destroy_process_group", lambda: calls.append("destroy"))
    return calls


@pytest.mark.parametrize("completed, expected", [(True, ["barrier", "destroy"]), (False, ["destroy"])])
def test_destroy_distributed_waits_for_the_other_ranks_only_after_a_completed_run(monkeypatch, completed, expected):
    calls = _record_calls(monkeypatch)
    comm.destroy_distributed(completed)
    assert calls == expected


def test_leave_group_when_done_waits_after_the_body_returns_and_not_after_it_raises(monkeypatch):
    calls = _record_calls(monkeypatch)
    with comm.leave_group_when_done():
        calls.append("body")
    assert calls == ["body", "barrier", "destroy"]
    calls.clear()
    with pytest.raises(KeyboardInterrupt), comm.leave_group_when_done():
        calls.append("body")
        raise KeyboardInterrupt
    assert calls == ["body", "destroy"]


def test_destroy_distributed_without_a_process_group_does_nothing(monkeypatch):
    monkeypatch.setattr(comm.dist, "barrier", lambda: pytest.fail("no group: nothing to wait for"))
    monkeypatch.setattr(comm.dist, "destroy_process_group", lambda: pytest.fail("no group to destroy"))
    comm.destroy_distributed(True)
