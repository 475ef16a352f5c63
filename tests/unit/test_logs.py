import json
import logging
import logging.config

from visionjobs.logs import JsonFormatter, logging_config


def test_json_lines_carry_job_id():
    record = logging.LogRecord("visionjobs.agents.coordinator", logging.INFO, __file__, 1,
                               "job %s done", ("job-1",), None)
    record.job_id = "job-1"
    record.phase = "EMBEDDINGS"
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "job job-1 done" and out["job_id"] == "job-1" and out["phase"] == "EMBEDDINGS"
    assert out["level"] == "INFO" and out["ts"].endswith("+00:00")


def test_plain_by_default():
    assert logging_config(False) is None
    cfg = logging_config(True, "warning")
    assert cfg["root"]["level"] == "WARNING"
    logging.config.dictConfig(cfg)  # valid dictConfig
    logging.getLogger().handlers.clear()

