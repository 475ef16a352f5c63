"""The records in code match the .avsc contract field by field (names, order, types)."""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import pytest

from visionjobs.records import RECORDS, Keypoint
from visionjobs.settings import REPO_DIR
from visionjobs.topics import CONTRACT

SCHEMA_DIR = REPO_DIR / "avro_schemas"


def _load_schemas() -> dict[str, dict]:
    out = {}
    for path in SCHEMA_DIR.glob("*.avsc"):
        raw = json.loads(path.read_text())
        out[f"{raw['namespace']}.{raw['name']}"] = raw
    return out


SCHEMAS = _load_schemas()


def _avro_type_of(py_type) -> object:
    """What Avro type a Python annotation must correspond to."""
    origin = typing.get_origin(py_type)
    args = typing.get_args(py_type)
    if origin is typing.Union and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return ("union", "null", _avro_type_of(inner))
    if origin is typing.Literal:
        return ("enum", tuple(args))
    if origin is list:
        return ("array", _avro_type_of(args[0]))
    if py_type is Keypoint:
        return ("record", Keypoint.AVRO_NAME)
    return {str: "string", int: ("int", "long"), float: ("float", "double"), bytes: "bytes",
            datetime: "timestamp-millis"}[py_type]


def _normalise_avro(t, namespace: str) -> object:
    if isinstance(t, list):
        assert t[0] == "null" and len(t) == 2, f"only [null, T] unions are used: {t}"
        return ("union", "null", _normalise_avro(t[1], namespace))
    if isinstance(t, dict):
        if t.get("logicalType") == "timestamp-millis":
            assert t["type"] == "long"
            return "timestamp-millis"
        if t["type"] == "enum":
            return ("enum", tuple(t["symbols"]))
        if t["type"] == "array":
            return ("array", _normalise_avro(t["items"], namespace))
        if t["type"] == "record":
            return ("record", f"{t.get('namespace', namespace)}.{t['name']}")
        return _normalise_avro(t["type"], namespace)
    return t


def _matches(expected, actual) -> bool:
    if isinstance(expected, tuple) and expected and expected[0] in ("int", "float"):
        return actual in expected
    if isinstance(expected, tuple) and isinstance(actual, tuple) and len(expected) == len(actual):
        return all(_matches(e, a) for e, a in zip(expected, actual))
    return expected == actual


def test_every_schema_has_a_record_and_every_record_a_schema():
    assert set(SCHEMAS) == set(RECORDS)


def test_every_topic_names_a_known_schema():
    for spec in CONTRACT:
        assert spec.schema in SCHEMAS, spec


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_record_fields_match_schema(name):
    schema = SCHEMAS[name]
    cls = RECORDS[name]
    hints = typing.get_type_hints(cls)
    code_fields = [f.name for f in fields(cls)]
    avro_fields = [f["name"] for f in schema["fields"]]
    assert code_fields == avro_fields, f"{name}: code {code_fields} != avsc {avro_fields}"
    for f in schema["fields"]:
        expected = _avro_type_of(hints[f["name"]])
        actual = _normalise_avro(f["type"], schema["namespace"])
        assert _matches(expected, actual), f"{name}.{f['name']}: code {expected} != avsc {actual}"


def test_nested_keypoint_matches_schema():
    raw = SCHEMAS["visionjobs.vision.ImageKeypointsResult"]
    (kp_field,) = [f for f in raw["fields"] if f["name"] == "keypoints"]
    item = kp_field["type"]["items"]
    assert [f["name"] for f in item["fields"]] == [f.name for f in fields(Keypoint)]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_documents_every_field(name):
    schema = SCHEMAS[name]
    assert schema.get("namespace", "").startswith("visionjobs."), name
    assert schema.get("doc"), name
    for f in schema["fields"]:
        assert f.get("doc"), f"{name}.{f['name']} has no doc"


def test_batch_schema_is_exactly_the_contract():
    raw = json.loads((SCHEMA_DIR / "products_images_ready_batch.avsc").read_text())
    assert [(f["name"], f["type"]) for f in raw["fields"]] == [
        ("job_id", "string"), ("event_id", "string"), ("total_images", "int")]


def test_a_field_added_on_one_side_fails(tmp_path: Path):
    """The check above really catches drift: add a field to a copy of a schema and compare."""
    raw = json.loads((SCHEMA_DIR / "products_images_ready_batch.avsc").read_text())
    raw["fields"].append({"name": "extra", "type": "string", "doc": "x"})
    cls = RECORDS["visionjobs.products.ProductsImagesReadyBatch"]
    assert [f.name for f in fields(cls)] != [f["name"] for f in raw["fields"]]
