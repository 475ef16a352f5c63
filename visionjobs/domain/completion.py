"""When is a job's phase done? Pure logic over a small immutable state value (no Faust, no I/O).

One :class:`PhaseState` exists per (job_id, phase). Three pure functions move it forward and return a
:class:`Decision`: the new state (``None`` = delete it), at most one :class:`Completion`, and, for
input that cannot be applied, the reason to dead-letter it. An agent only reads the state, calls one
function, writes ``decision.state`` back and sends what the decision says.

Rules
-----
* Results may arrive before the total, the total may arrive last.
* A result counts once per distinct ``image_id``. Duplicates never count twice. **Upgrade rule:** a
  later OK for an image that FAILED earlier turns it into a success (``failed -1, succeeded +1``,
  ``done`` unchanged); a later FAILED never downgrades an OK. Rationale: results are retried by the
  vision agents (redelivery, operator re-run); the best outcome seen is the truth about the image, and
  a transient failure after a success must not destroy a usable result. Upgrades only happen before
  completion; the completion reports what was known at that moment.
* ``total_images == 0`` completes at once.
* A second batch event with the same total is a duplicate (ignored); with a different total it is
  invalid (dead-lettered with the reason) and the state is untouched.
* After completion nothing produces another completion: late results, duplicates and batch events are
  only counted (metrics). The completed marker is kept ``retention`` long after completion, then the
  state is deleted (a tombstone in the changelog), so state does not grow forever.
* More distinct images than the total: the phase completes when the count reaches the total; an extra
  image arriving after that is invalid input. If the extras arrived *before* the total, the phase
  completes when the total arrives, with the true counts (``done > total``), and the batch event is
  reported as invalid (``extra_images``) so someone looks at the producer.
* A job with no progress for ``timeout`` (no total, or results stopped) is expired by
  :func:`expire` with status TIMED_OUT and the counts it reached, exactly once.
* Time only comes from events (Kafka message timestamps, the expiry tick's ``issued_at``), so a replay
  of the same events decides exactly the same way.

Image ids are kept as 64-bit BLAKE2b hashes: 8 bytes per image in the changelog. Two ids of one job
colliding has probability about n^2 / 2^65 (3e-12 for a 10,000-image job); a collision counts two
images as one, so the phase would time out instead of completing: it can never complete early.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal, Optional

Status = Literal["COMPLETED", "TIMED_OUT"]


def image_key(image_id: str) -> int:
    """64-bit key of an image id (stable across processes and versions)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True, slots=True)
class PhaseState:
    first_seen_ms: int
    last_progress_ms: int
    total: Optional[int] = None
    ok: frozenset[int] = frozenset()
    failed: frozenset[int] = frozenset()
    completed_ms: Optional[int] = None
    status: Optional[Status] = None

    @property
    def done(self) -> int:
        return len(self.ok) + len(self.failed)

    @property
    def succeeded(self) -> int:
        return len(self.ok)

    @property
    def failed_count(self) -> int:
        return len(self.failed)

    @property
    def completed(self) -> bool:
        return self.completed_ms is not None

    def knows(self, key: int) -> bool:
        return key in self.ok or key in self.failed


@dataclass(frozen=True, slots=True)
class Completion:
    status: Status
    total: Optional[int]
    done: int
    succeeded: int
    failed: int
    first_seen_ms: int
    completed_ms: int


#: What happened to an event (a metric label).
Note = Literal[
    "counted", "upgraded", "duplicate", "total_set", "duplicate_total", "late", "expired",
    "not_due", "retention_deleted", "unknown_job", "invalid",
]


@dataclass(frozen=True, slots=True)
class Decision:
    state: Optional[PhaseState]
    note: Note
    completion: Optional[Completion] = None
    invalid: Optional[str] = None  # "reason_code: message" to dead-letter the input with


def _new(ts_ms: int) -> PhaseState:
    return PhaseState(first_seen_ms=ts_ms, last_progress_ms=ts_ms)


def _complete(state: PhaseState, status: Status, ts_ms: int) -> tuple[PhaseState, Completion]:
    done = replace(state, completed_ms=ts_ms, status=status)
    return done, Completion(status, state.total, state.done, state.succeeded, state.failed_count,
                            state.first_seen_ms, ts_ms)


def apply_total(state: Optional[PhaseState], total: int, ts_ms: int) -> Decision:
    """The job's batch event: it has ``total`` images."""
    if total < 0:
        return Decision(state, "invalid", invalid=f"negative_total: total_images={total}")
    if state is not None and state.completed:
        if state.total is not None and state.total != total:
            return Decision(state, "invalid",
                            invalid=f"total_conflict: total_images={total}, job completed with {state.total}")
        return Decision(state, "late")
    if state is not None and state.total is not None:
        if state.total == total:
            return Decision(state, "duplicate_total")
        return Decision(state, "invalid", invalid=f"total_conflict: total_images={total}, already {state.total}")
    base = state if state is not None else _new(ts_ms)
    new = replace(base, total=total, last_progress_ms=ts_ms)
    if new.done < total:
        return Decision(new, "total_set")
    new, completion = _complete(new, "COMPLETED", ts_ms)
    invalid = None
    if completion.done > total:
        invalid = f"extra_images: {completion.done} distinct images for total_images={total}"
    return Decision(new, "total_set", completion, invalid)


def apply_result(state: Optional[PhaseState], image: int, ok: bool, ts_ms: int) -> Decision:
    """One image's result (``image`` = :func:`image_key` of its id; ``ok`` = status OK)."""
    if state is not None and state.completed:
        if state.knows(image) or state.total is None or state.status == "TIMED_OUT":
            return Decision(state, "late")
        return Decision(state, "invalid",
                        invalid=f"extra_images: a distinct image beyond total_images={state.total}")
    base = state if state is not None else _new(ts_ms)
    if base.knows(image):
        if ok and image in base.failed:
            return Decision(replace(base, ok=base.ok | {image}, failed=base.failed - {image},
                                    last_progress_ms=ts_ms), "upgraded")
        return Decision(state, "duplicate")
    if ok:
        new = replace(base, ok=base.ok | {image}, last_progress_ms=ts_ms)
    else:
        new = replace(base, failed=base.failed | {image}, last_progress_ms=ts_ms)
    if new.total is not None and new.done >= new.total:
        new, completion = _complete(new, "COMPLETED", ts_ms)
        return Decision(new, "counted", completion)
    return Decision(new, "counted")


def expire(state: Optional[PhaseState], now_ms: int, timeout_ms: int, retention_ms: int) -> Decision:
    """An expiry check at ``now_ms`` (the tick's own timestamp)."""
    if state is None:
        return Decision(None, "unknown_job")
    if state.completed:
        assert state.completed_ms is not None
        if now_ms - state.completed_ms >= retention_ms:
            return Decision(None, "retention_deleted")
        return Decision(state, "not_due")
    if now_ms - state.last_progress_ms >= timeout_ms:
        new, completion = _complete(state, "TIMED_OUT", now_ms)
        return Decision(new, "expired", completion)
    return Decision(state, "not_due")


def is_due(state: PhaseState, now_ms: int, timeout_ms: int, retention_ms: int) -> bool:
    """Would :func:`expire` change this state at ``now_ms``? (The ticker asks this before sending.)"""
    if state.completed:
        assert state.completed_ms is not None
        return now_ms - state.completed_ms >= retention_ms
    return now_ms - state.last_progress_ms >= timeout_ms
