"""Compact binary encoding of :class:`~visionjobs.domain.completion.PhaseState` for tables.

Layout (little-endian), version 1::

    B version | B flags | q first_seen_ms | q last_progress_ms | i total | q completed_ms
    | I n_ok | I n_failed | n_ok x Q image keys | n_failed x Q image keys

flags: bit 0 total known, bit 1 completed, bit 2 status TIMED_OUT. 38 bytes of header plus 8 bytes
per image id; sorted keys make the encoding deterministic.
"""

from __future__ import annotations

import struct

from ..domain.completion import PhaseState

VERSION = 1
_HEADER = struct.Struct("<BBqqiqII")
HEADER_SIZE = _HEADER.size


class StateDecodeError(ValueError):
    pass


def encode_state(state: PhaseState) -> bytes:
    flags = (1 if state.total is not None else 0) | (2 if state.completed else 0) | (
        4 if state.status == "TIMED_OUT" else 0)
    ok = sorted(state.ok)
    failed = sorted(state.failed)
    header = _HEADER.pack(VERSION, flags, state.first_seen_ms, state.last_progress_ms,
                          state.total if state.total is not None else -1,
                          state.completed_ms if state.completed_ms is not None else -1,
                          len(ok), len(failed))
    return header + struct.pack(f"<{len(ok) + len(failed)}Q", *ok, *failed)


def decode_state(data: bytes) -> PhaseState:
    if len(data) < HEADER_SIZE:
        raise StateDecodeError(f"state too short: {len(data)} bytes")
    version, flags, first, last, total, completed, n_ok, n_failed = _HEADER.unpack_from(data)
    if version != VERSION:
        raise StateDecodeError(f"unknown state version {version}")
    if len(data) != HEADER_SIZE + 8 * (n_ok + n_failed):
        raise StateDecodeError("state length does not match its counts")
    keys = struct.unpack_from(f"<{n_ok + n_failed}Q", data, HEADER_SIZE)
    return PhaseState(
        first_seen_ms=first,
        last_progress_ms=last,
        total=total if flags & 1 else None,
        ok=frozenset(keys[:n_ok]),
        failed=frozenset(keys[n_ok:]),
        completed_ms=completed if flags & 2 else None,
        status=("TIMED_OUT" if flags & 4 else "COMPLETED") if flags & 2 else None,
    )


def register_faust_codec(name: str = "phase-state") -> None:
    from faust.serializers import codecs

    class PhaseStateCodec(codecs.Codec):
        def _dumps(self, obj: PhaseState) -> bytes:
            return encode_state(obj)

        def _loads(self, s: bytes) -> PhaseState:
            return decode_state(s)

    codecs.register(name, PhaseStateCodec())
