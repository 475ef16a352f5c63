"""Every rule of the completion logic, plus properties over arbitrary event orders (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from visionjobs.domain.completion import (
    Completion, apply_result, apply_total, expire, image_key, is_due)

T = 1_000_000
TIMEOUT = 60_000
RETENTION = 3_600_000


def k(i: int) -> int:
    return image_key(f"img-{i}")


def run(events, state=None):
    """Apply events [(kind, arg..., ts)] and collect completions and invalid reasons."""
    completions, invalid = [], []
    for ev in events:
        if ev[0] == "total":
            d = apply_total(state, ev[1], ev[2])
        elif ev[0] == "result":
            d = apply_result(state, k(ev[1]), ev[2], ev[3])
        else:
            d = expire(state, ev[1], TIMEOUT, RETENTION)
        state = d.state
        if d.completion:
            completions.append(d.completion)
        if d.invalid:
            invalid.append(d.invalid.split(":")[0])
    return state, completions, invalid


def test_total_first_then_results_completes_on_last():
    state, comps, _ = run([("total", 2, T), ("result", 1, True, T + 1)])
    assert comps == [] and state.done == 1 and not state.completed
    state, comps, _ = run([("result", 2, False, T + 2)], state)
    assert comps == [Completion("COMPLETED", 2, 2, 1, 1, T, T + 2)]
    assert state.completed and state.status == "COMPLETED"


def test_results_before_total_and_total_last():
    state, comps, _ = run([("result", 1, True, T), ("result", 2, True, T + 1), ("total", 2, T + 5)])
    assert comps == [Completion("COMPLETED", 2, 2, 2, 0, T, T + 5)]


def test_zero_images_completes_at_once():
    state, comps, _ = run([("total", 0, T)])
    assert comps == [Completion("COMPLETED", 0, 0, 0, 0, T, T)]


def test_duplicate_result_never_counts_twice():
    state, comps, _ = run([("total", 3, T), ("result", 1, True, T), ("result", 1, True, T), ("result", 1, False, T)])
    assert state.done == 1 and state.succeeded == 1 and comps == []


def test_state_is_not_mutated_in_place():
    s0 = apply_total(None, 2, T).state
    s1 = apply_result(s0, k(1), True, T).state
    assert s0.ok == frozenset() and s1.ok == {k(1)} and s0 is not s1


def test_duplicate_returns_the_same_state_object():
    s1 = apply_result(None, k(1), True, T).state
    d = apply_result(s1, k(1), True, T + 1)
    assert d.state is s1 and d.note == "duplicate"


def test_later_ok_upgrades_a_failed_image():
    state, comps, _ = run([("total", 2, T), ("result", 1, False, T), ("result", 1, True, T + 1)])
    assert (state.done, state.succeeded, state.failed_count) == (1, 1, 0)


def test_later_failed_never_downgrades_ok():
    state, _, _ = run([("total", 2, T), ("result", 1, True, T), ("result", 1, False, T + 1)])
    assert (state.succeeded, state.failed_count) == (1, 0)


def test_second_batch_same_total_is_duplicate():
    s = apply_total(None, 3, T).state
    d = apply_total(s, 3, T + 1)
    assert d.state is s and d.note == "duplicate_total" and d.invalid is None


def test_second_batch_different_total_is_invalid_and_state_untouched():
    s = apply_result(apply_total(None, 3, T).state, k(1), True, T).state
    d = apply_total(s, 4, T + 1)
    assert d.state is s and d.invalid.startswith("total_conflict") and d.completion is None


def test_negative_total_is_invalid():
    d = apply_total(None, -1, T)
    assert d.state is None and d.invalid.startswith("negative_total")


def test_after_completion_nothing_completes_again():
    state, comps, _ = run([("total", 1, T), ("result", 1, True, T)])
    assert len(comps) == 1
    for ev in [("result", 1, True, T + 1), ("result", 1, False, T + 1), ("total", 1, T + 2),
               ("tick", T + TIMEOUT * 10)]:
        d = (apply_total(state, ev[1], ev[2]) if ev[0] == "total" else
             apply_result(state, k(ev[1]), ev[2], ev[3]) if ev[0] == "result" else
             expire(state, ev[1], TIMEOUT, RETENTION))
        assert d.completion is None and d.state is state
        assert d.note in ("late", "not_due")


def test_extra_image_after_completion_is_invalid():
    state, comps, _ = run([("total", 1, T), ("result", 1, True, T)])
    d = apply_result(state, k(2), True, T + 1)
    assert d.completion is None and d.state is state and d.invalid.startswith("extra_images")


def test_extra_images_before_total_complete_with_true_counts_and_report():
    state, comps, invalid = run([("result", i, True, T + i) for i in range(5)] + [("total", 3, T + 10)])
    assert comps == [Completion("COMPLETED", 3, 5, 5, 0, T, T + 10)]
    assert invalid == ["extra_images"]


def test_total_conflict_after_completion_is_invalid():
    state, _, _ = run([("total", 1, T), ("result", 1, True, T)])
    d = apply_total(state, 2, T + 1)
    assert d.invalid.startswith("total_conflict") and d.completion is None


def test_stale_job_times_out_once_with_counts_reached():
    state, comps, _ = run([("total", 3, T), ("result", 1, True, T + 10), ("result", 2, False, T + 20)])
    assert not is_due(state, T + 20 + TIMEOUT - 1, TIMEOUT, RETENTION)
    d = expire(state, T + 20 + TIMEOUT - 1, TIMEOUT, RETENTION)
    assert d.completion is None and d.state is state
    d = expire(state, T + 20 + TIMEOUT, TIMEOUT, RETENTION)
    assert d.completion == Completion("TIMED_OUT", 3, 2, 1, 1, T, T + 20 + TIMEOUT)
    d2 = expire(d.state, T + 20 + TIMEOUT * 2, TIMEOUT, RETENTION)
    assert d2.completion is None
    # a late result after the timeout is only counted
    d3 = apply_result(d.state, k(3), True, T + 20 + TIMEOUT * 2)
    assert d3.completion is None and d3.note == "late"


def test_job_without_total_times_out_with_null_total():
    state, _, _ = run([("result", 1, True, T)])
    d = expire(state, T + TIMEOUT, TIMEOUT, RETENTION)
    assert d.completion.status == "TIMED_OUT" and d.completion.total is None and d.completion.done == 1


def test_progress_postpones_the_timeout():
    state, _, _ = run([("total", 3, T), ("result", 1, True, T + TIMEOUT - 1)])
    assert expire(state, T + TIMEOUT, TIMEOUT, RETENTION).completion is None


def test_completed_state_deleted_after_retention():
    state, _, _ = run([("total", 0, T)])
    assert expire(state, T + RETENTION - 1, TIMEOUT, RETENTION).state is state
    assert is_due(state, T + RETENTION, TIMEOUT, RETENTION)
    d = expire(state, T + RETENTION, TIMEOUT, RETENTION)
    assert d.state is None and d.note == "retention_deleted" and d.completion is None


def test_unknown_job_tick_is_noop():
    d = expire(None, T, TIMEOUT, RETENTION)
    assert d.state is None and d.note == "unknown_job" and d.completion is None


def test_image_key_is_stable():
    # Persisted in changelogs: must never change between versions or processes.
    assert image_key("img-1") == image_key("img-1") != image_key("img-2")
    assert image_key("abc") == 0x5995d533d814bbd8  # blake2b-64 little-endian, pinned


# ---------------------------------------------------------------- properties (hypothesis)

@st.composite
def job_events(draw):
    """A job of N images: each image has 1..3 results (failures, retries, duplicates), the batch event
    appears 1..2 times, and everything is shuffled; timestamps increase but never reach the timeout."""
    n = draw(st.integers(0, 25))
    events = []
    final_ok = 0
    for i in range(n):
        outcomes = draw(st.lists(st.booleans(), min_size=1, max_size=3))
        final_ok += any(outcomes)
        events += [("result", i, ok) for ok in outcomes]
    events += [("total", n)] * draw(st.integers(1, 2))
    events += [("tick",)] * draw(st.integers(0, 3))
    order = draw(st.permutations(events))
    return n, final_ok, order


def _replay(order, start=T):
    stamped = []
    for i, ev in enumerate(order):
        ts = start + i
        stamped.append((*ev, ts) if ev[0] != "tick" else ("tick", ts))
    return run(stamped)


@settings(max_examples=400, deadline=None)
@given(job_events())
def test_any_order_yields_exactly_one_completion_with_right_counts(job):
    n, final_ok, order = job
    state, comps, invalid = _replay(order)
    assert len(comps) == 1, comps
    (c,) = comps
    assert c.status == "COMPLETED" and c.total == n and c.done == n
    assert c.succeeded + c.failed == n
    # The upgrade rule means every image with any OK before completion counts as succeeded; images
    # whose OK arrived only after completion stay failed. So succeeded is bounded by final_ok.
    assert c.succeeded <= final_ok
    assert invalid == []
    assert state.completed


@settings(max_examples=200, deadline=None)
@given(job_events(), st.data())
def test_replaying_a_prefix_again_never_emits_twice(job, data):
    """Redelivery: after a crash, a suffix of already-applied events is delivered again."""
    n, _, order = job
    cut = data.draw(st.integers(0, len(order)))
    redelivered = list(order[:cut]) + list(order[data.draw(st.integers(0, cut)):])
    _, comps, _ = _replay(redelivered)
    assert len(comps) == 1 and comps[0].done == n


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.data())
def test_missing_results_time_out_exactly_once(n, data):
    delivered = data.draw(st.integers(0, n - 1))
    events = [("result", i, True) for i in range(delivered)] + [("total", n)]
    order = data.draw(st.permutations(events))
    state, comps, _ = _replay(order)
    assert comps == []
    ticks = [("tick", T + len(order) + TIMEOUT * m) for m in range(1, 4)]
    state, comps, _ = run(ticks, state)
    assert len(comps) == 1
    assert comps[0].status == "TIMED_OUT" and comps[0].done == delivered and comps[0].total == n


def test_deterministic_replay():
    rnd = random.Random(7)
    events = [("result", i, rnd.random() > 0.3, T + i) for i in range(10)] + [("total", 10, T + 50)]
    rnd.shuffle(events)
    assert run(events)[1] == run(events)[1]
