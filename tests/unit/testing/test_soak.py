"""The pure parts of the chaos soak: schedule, rate, partitioner, log scan, result and CLI checks."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from visionjobs.testing.loadgen import LoadSpec, iter_events, plan_jobs
from visionjobs.testing.soak import (BROKER_RESTART, KILL, SoakConfig, SoakResult, chaos_schedule,
                                     estimate_events, murmur2, partition_for, production_plan, scan_log)


def test_schedule_spreads_kills_and_puts_the_broker_restart_in_the_middle():
    events = chaos_schedule(6, True, 140.0, 3, random.Random(5))
    assert [e.kind for e in events].count(KILL) == 6
    assert [e.kind for e in events].count(BROKER_RESTART) == 1
    times = [e.at_s for e in events]
    assert times == sorted(times)
    assert all(0 < t < 140 for t in times)
    slot = 140.0 / 7
    for i, e in enumerate(events):  # one event per slot, never at a slot's edge
        assert slot * i + 0.15 * slot - 1e-6 <= e.at_s <= slot * (i + 1) - 0.15 * slot + 1e-6
    restart = next(e for e in events if e.kind == BROKER_RESTART)
    assert 3 * slot <= restart.at_s <= 4 * slot
    assert all(0 <= e.worker < 3 for e in events if e.kind == KILL)
    assert all(e.worker == -1 for e in events if e.kind == BROKER_RESTART)


def test_schedule_is_reproducible_from_the_seed_and_handles_edges():
    assert chaos_schedule(4, True, 60, 2, random.Random(1)) == chaos_schedule(4, True, 60, 2, random.Random(1))
    assert chaos_schedule(0, False, 60, 2, random.Random(1)) == []
    only_restart = chaos_schedule(0, True, 60, 2, random.Random(1))
    assert [e.kind for e in only_restart] == [BROKER_RESTART]
    assert [e.kind for e in chaos_schedule(3, False, 60, 1, random.Random(1))] == [KILL] * 3
    assert {e.worker for e in chaos_schedule(50, False, 60, 4, random.Random(2))} == {0, 1, 2, 3}


def test_production_plan_spreads_the_events_over_the_chaos():
    rate, duration = production_plan(6000, 4, slot_s=15.0, min_duration_s=20.0)
    assert duration == 60.0 and rate == 100.0
    rate, duration = production_plan(6000, 0, slot_s=15.0, min_duration_s=20.0)
    assert duration == 20.0 and rate == 300.0
    rate, duration = production_plan(6000, 4, rate=1000.0)
    assert (rate, duration) == (1000.0, 6.0)


def test_event_estimate_is_close_to_what_produce_sends():
    spec = LoadSpec(jobs=400, seed=3, duplicate_fraction=0.2)
    plans = plan_jobs(spec, prefix="x")

    class S:  # iter_events only needs topic names
        topic_prefix = ""

    actual = sum(1 for _ in iter_events(plans, spec, S()))
    estimate = estimate_events(plans, spec)
    assert abs(estimate - actual) / actual < 0.05


def test_murmur2_matches_kafka():
    # Vectors of Kafka's own UtilsTest.testMurmur2 (signed 32-bit there).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        bytes([ord("a"), ord("b"), ord("c")]): 479470107,
    }
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


def test_partition_for_is_in_range_and_stable():
    parts = [partition_for(f"job-{i}", 8) for i in range(200)]
    assert set(parts) == set(range(8))
    assert partition_for("job-1", 8) == partition_for(b"job-1", 8)


def test_scan_log_counts_levels_and_keeps_distinct_lines():
    text = "\n".join([
        "[2025-01-01 10:00:00,001] [123] [INFO] [^Worker]: Ready",
        "[2025-01-01 10:00:01,001] [123] [WARNING] Heartbeat failed for group x",
        "[2025-01-01 10:00:02,001] [123] [WARNING] Heartbeat failed for group x",
        "[2025-01-01 10:00:03,001] [123] [ERROR] [^---Fetcher]: Crashed reason=KafkaError()",
    ])
    out = scan_log(text)
    assert out["counts"] == {"WARNING": 2, "ERROR": 1}
    assert len(out["first"]) == 2


def _result(**kw) -> SoakResult:
    base = dict(jobs=300, completions=600, kills=3, kills_planned=3, broker_restarts=1,
                broker_restarts_planned=1, events=7000, production_s=60.0, elapsed_s=90.0)
    base.update(kw)
    return SoakResult(**base)


def test_result_passes_only_without_duplicates_missing_or_wrong_counts():
    assert _result().ok and _result().exit_code == 0
    for bad in ({"duplicates": 1}, {"missing": 2}, {"wrong_counts": 1}, {"unexpected": 1}, {"error": "boom"}):
        assert not _result(**bad).ok
        assert _result(**bad).exit_code == 1
    assert _result(interrupted=True).exit_code == 130


def test_result_formats_for_people_and_json():
    r = _result(worker_restarts=1, reconnects=[{"rejoined_s": 4.24}])
    text = r.format()
    for needle in ("soak PASSED", "duplicates       0", "missing          0", "kills            3/3",
                   "broker restarts  1/1", "4.2s", "worker restarts  1", "elapsed          90.0s"):
        assert needle in text
    data = json.loads(json.dumps(r.to_dict()))
    assert data["ok"] is True and data["expected_completions"] == 600
    assert {"jobs", "completions", "duplicates", "missing", "wrong_counts", "kills", "broker_restarts",
            "worker_restarts", "elapsed_s"} <= set(data)
    assert "soak FAILED" in _result(missing=3).format()


def test_config_refuses_a_broker_restart_on_a_foreign_broker():
    with pytest.raises(ValueError, match="own broker"):
        SoakConfig(bootstrap="127.0.0.1:9092", broker_restart=True).validate()
    SoakConfig(bootstrap="127.0.0.1:9092", broker_restart=False).validate()
    with pytest.raises(ValueError):
        SoakConfig(jobs=0).validate()


def test_cli_refuses_broker_restart_with_bootstrap_before_doing_anything():
    from visionjobs.cli import main

    result = CliRunner().invoke(main, ["soak", "--bootstrap", "127.0.0.1:1", "--broker-restart"])
    assert result.exit_code == 2
    assert "--broker-restart needs the soak's own broker" in result.output
    result = CliRunner().invoke(main, ["soak", "--jobs", "0"])
    assert result.exit_code == 2
    assert "soak" in CliRunner().invoke(main, ["--help"]).output


def test_auto_slot_leaves_room_for_a_restart():
    from visionjobs.testing.soak import auto_slot

    assert auto_slot(2.0, 10.0, 2.0) == 20.0
    assert auto_slot(0.5, 6.0, 0.0) == 15.0  # never below the floor
    assert auto_slot(14.0, 10.0, 2.0) == 38.0


def test_timeline_names_each_chaos_event():
    r = _result(events=7000, chaos=[
        {"event": KILL, "worker": "coordinator-0", "pid": 11, "at_s": 6.1, "at_events": 700, "ready_after_s": 20.0},
        {"event": BROKER_RESTART, "at_s": 40.0, "at_events": 4000, "broker_up_after_s": 12.0, "rejoined_s": None},
        {"event": "worker_exit", "worker": "coordinator-1", "rc": 1, "at_s": 41.0, "s_after_broker_restart": 1.0},
    ])
    lines = r.timeline()
    assert lines[0].startswith("6.1s ~700/7000 events: SIGKILL coordinator-0 (pid 11)")
    assert "NOT rejoined" in lines[1]
    assert "coordinator-1 exited on its own (rc 1)" in lines[2]
    assert all(f"  chaos            {line}" in r.format() for line in lines)


class _FakeProc:
    pid = 4242
    returncode = 1


class _FakeWorker:
    """Stands in for WorkerProcess: exited once on its own, fine after a restart."""

    def __init__(self) -> None:
        self.name = "coordinator-0"
        self.proc = _FakeProc()
        self.log_path = "x.log"
        self.starts = 1
        self._alive = False

    def alive(self) -> bool:
        return self._alive

    def start(self):
        self.starts += 1
        self._alive = True
        return self

    def wait_ready(self, timeout: float = 0):
        return self


def test_a_worker_that_exits_on_its_own_is_restarted_and_counted_but_not_while_the_broker_is_down():
    from visionjobs.testing.soak import Soak

    soak = Soak(SoakConfig(jobs=1, bootstrap="127.0.0.1:1", broker_restart=False), say=lambda m: None)
    worker = _FakeWorker()
    soak.workers = [worker]
    soak.broker_down = True
    soak._watch()
    assert worker.starts == 1 and soak.result.worker_restarts == 0
    soak.broker_down = False
    soak._watch()
    assert worker.starts == 2 and soak.result.worker_restarts == 1
    assert soak.result.worker_exits[0]["rc"] == 1
    soak._watch()  # alive now: nothing more
    assert soak.result.worker_restarts == 1
    assert "exited on its own (rc 1)" in soak.result.timeline()[0]
