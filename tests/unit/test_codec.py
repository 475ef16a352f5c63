"""Codec: single-object encoding round trips, schema evolution, rejection of bad bytes."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from visionjobs.codec import HEADER_LEN, MAGIC, AvroCodec, CodecError, schema_fingerprint
from visionjobs.records import ImageEmbeddingResult, ProductImageReady, ProductsImagesReadyBatch, RECORDS
from visionjobs.testing.samples import SAMPLES, T0
from visionjobs.settings import REPO_DIR

SCHEMA_DIR = REPO_DIR / "avro_schemas"


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SCHEMA_DIR)


def test_samples_cover_every_record():
    assert {type(s).AVRO_NAME for s in SAMPLES} == set(RECORDS)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(codec, record):
    data = codec.encode(record)
    assert data[:2] == MAGIC
    assert codec.decode(data) == record


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_header_is_the_schema_fingerprint(codec, record):
    entry = codec.registry.current[record.AVRO_NAME]
    assert codec.encode(record)[2:HEADER_LEN] == entry.fingerprint == schema_fingerprint(entry.raw)


def test_fingerprint_is_crc64_avro_little_endian():
    # CRC-64-AVRO as written in the Avro specification, computed independently of fastavro.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)

    def crc(b: bytes) -> int:
        fp = empty
        for x in b:
            fp = (fp >> 8) ^ table[(fp ^ x) & 0xFF]
        return fp

    schema = {"type": "record", "name": "A", "fields": [{"name": "x", "type": "int"}]}
    canonical = '{"name":"A","type":"record","fields":[{"name":"x","type":"int"}]}'
    assert schema_fingerprint(schema) == crc(canonical.encode()).to_bytes(8, "little")


def test_reader_with_newer_schema_reads_older_message(tmp_path):
    """Schema evolution: a message written with an older schema is resolved to the current one."""
    current = json.loads((SCHEMA_DIR / "image_embedding_result.avsc").read_text())
    old = json.loads(json.dumps(current))
    # The "older" writer lacked the nullable error field (current schema gives it a default).
    old["fields"] = [f for f in old["fields"] if f["name"] != "error"]
    parsed_old = fastavro.parse_schema(old)
    buf = io.BytesIO()
    buf.write(MAGIC + schema_fingerprint(old))
    fastavro.schemaless_writer(buf, parsed_old, {
        "event_id": "e", "job_id": "j", "image_id": "i", "product_id": "p", "status": "OK",
        "model": "m", "embedding": [1.0], "created_at": T0})
    codec = AvroCodec(SCHEMA_DIR)
    with pytest.raises(CodecError) as unknown:
        codec.decode(buf.getvalue())
    assert unknown.value.reason == "unknown_fingerprint"
    codec.registry.add(old)  # a retired writer schema, as avro_schemas/history/ would provide
    record = codec.decode(buf.getvalue())
    assert record == ImageEmbeddingResult("e", "j", "i", "p", "OK", None, "m", [1.0], T0)


def test_history_dir_is_loaded(tmp_path):
    for path in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    old = json.loads((SCHEMA_DIR / "product_image_ready.avsc").read_text())
    old["fields"] = old["fields"][:-1] + [{"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "x"},
                                          {"name": "legacy", "type": "string", "doc": "dropped later"}]
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "product_image_ready.v0.avsc").write_text(json.dumps(old))
    codec = AvroCodec(tmp_path)
    buf = io.BytesIO(MAGIC + schema_fingerprint(old))
    buf.seek(0, 2)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), {
        "event_id": "e", "job_id": "j", "product_id": "p", "image_id": "i", "image_uri": "u",
        "created_at": T0, "legacy": "gone"})
    assert codec.decode(buf.getvalue()) == ProductImageReady("e", "j", "p", "i", "u", T0)


@pytest.mark.parametrize("data, reason", [
    (b"", "bad_magic"),
    (b"not avro at all", "bad_magic"),
    (b'{"job_id": "j", "total_images": 3}', "bad_magic"),
    (MAGIC + b"\x00" * 8 + b"\x02a", "unknown_fingerprint"),
])
def test_garbage_is_rejected_with_reason(codec, data, reason):
    with pytest.raises(CodecError) as err:
        codec.decode(data, topic="products.images.ready.batch")
    assert err.value.reason == reason
    assert "products.images.ready.batch" in str(err.value)


def test_truncated_body_is_rejected(codec):
    data = codec.encode(SAMPLES[0])
    with pytest.raises(CodecError) as err:
        codec.decode(data[:-5], topic="t")
    assert err.value.reason == "malformed_body"


def test_trailing_bytes_are_rejected(codec):
    data = codec.encode(ProductsImagesReadyBatch("j", "e", 1))
    with pytest.raises(CodecError) as err:
        codec.decode(data + b"\x00\x00")
    assert err.value.reason == "trailing_bytes"


def test_expect_checks_schema_name(codec):
    data = codec.encode(ProductsImagesReadyBatch("j", "e", 1))
    with pytest.raises(CodecError) as err:
        codec.decode(data, expect=ProductImageReady.AVRO_NAME)
    assert err.value.reason == "unexpected_schema"


def test_encode_rejects_invalid_record(codec):
    with pytest.raises(CodecError) as err:
        codec.encode(ImageEmbeddingResult("e", "j", "i", "p", "MAYBE", None, "m", [], T0))
    assert err.value.reason == "encode_failed"


def test_schemas_parsed_once(codec):
    assert codec.registry is codec.registry
