import pytest
from hypothesis import given
from hypothesis import strategies as st

from visionjobs.domain.completion import PhaseState, apply_result, apply_total, expire, image_key
from visionjobs.tables.state_codec import HEADER_SIZE, StateDecodeError, decode_state, encode_state

keys = st.frozensets(st.integers(0, 2**64 - 1), max_size=50)


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.one_of(st.none(), st.integers(0, 2**31 - 1)),
       keys, keys, st.one_of(st.none(), st.integers(0, 2**62)), st.sampled_from(["COMPLETED", "TIMED_OUT"]))
def test_round_trip(first, last, total, ok, failed, completed, status):
    failed = failed - ok
    state = PhaseState(first, last, total, ok, failed, completed, status if completed is not None else None)
    assert decode_state(encode_state(state)) == state


def test_eight_bytes_per_image():
    s = apply_total(None, 100, 1).state
    for i in range(100):
        s = apply_result(s, image_key(f"img-{i}"), i % 3 != 0, 2).state
    assert len(encode_state(s)) == HEADER_SIZE + 8 * 100


def test_completed_timed_out_survives():
    s = expire(apply_total(None, 3, 1).state, 10**9, 10, 10**12).state
    assert decode_state(encode_state(s)).status == "TIMED_OUT"


@pytest.mark.parametrize("data", [b"", b"\x02" + b"\x00" * 60, encode_state(PhaseState(1, 1))[:-1] + b"\x00\x00"])
def test_rejects_bad_bytes(data):
    with pytest.raises(StateDecodeError):
        decode_state(data)
