"""``visionjobs smoke`` end to end: the three workers as processes, several jobs (the samples, one
image outside the roots, an empty job, ...), exactly one completion per job and phase."""

from __future__ import annotations

import json

import pytest

from visionjobs.demo import run_smoke

pytestmark = pytest.mark.integration


def test_smoke_jobs_complete_exactly_once(vj_env, vj_settings, worker_logs):
    report = run_smoke(jobs=4, env=vj_env, log_dir=worker_logs, timeout_s=240)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
    jobs = {job.name: job for job in report.jobs}
    assert list(jobs) == ["samples", "outside-roots", "empty", "subset-0"]
    for job in report.jobs:
        for phase in ("EMBEDDINGS", "KEYPOINTS"):
            (completion,) = job.completions[phase]  # exactly one per phase
            assert completion["status"] == "COMPLETED"
            assert completion["total"] == completion["done"] == job.images
    # the image outside the roots is FAILED by both agents, and still counts
    for phase in ("EMBEDDINGS", "KEYPOINTS"):
        (c,) = jobs["outside-roots"].completions[phase]
        assert (c["total"], c["succeeded"], c["failed"]) == (4, 3, 1)
        (e,) = jobs["empty"].completions[phase]
        assert (e["total"], e["done"], e["failed"]) == (0, 0, 0)
    assert jobs["samples"].images == 15


def test_smoke_reports_a_job_that_never_completes(vj_env, vj_settings, worker_logs):
    """Without a coordinator no job completes: the smoke must fail (not hang, not pass)."""
    report = run_smoke(jobs=1, env=vj_env, log_dir=worker_logs, timeout_s=8, linger_s=0,
                       roles=("embedding", "keypoints"))
    assert not report.ok
    assert report.error and "not every job completed" in report.error
    assert report.jobs[0].problems == ["no EMBEDDINGS completion", "no KEYPOINTS completion"]
