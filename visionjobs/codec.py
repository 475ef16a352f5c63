"""The one Avro codec: single-object encoding of every record of the contract.

Wire format (Avro specification, "Single-object encoding")::

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro binary body

Every message names the schema that wrote it, so a reader resolves older writer schemas against the
current reader schema (Avro schema resolution). Writer schemas are found by fingerprint among the
current ``avro_schemas/*.avsc`` and the retired versions in ``avro_schemas/history/``.

Schemas are parsed once, lazily, on first use (no I/O at import time). The codec is registered with
Faust under the name ``"avro"`` by :func:`register_faust_codec`.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

from .records import RECORDS, AvroRecord

MAGIC = b"\xc3\x01"
HEADER_LEN = 10


class CodecError(ValueError):
    """A message could not be encoded or decoded. ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, message: str, topic: Optional[str] = None) -> None:
        self.reason = reason
        self.topic = topic
        where = f" (topic {topic})" if topic else ""
        super().__init__(f"{reason}: {message}{where}")


@dataclass(frozen=True)
class SchemaEntry:
    name: str
    fingerprint: bytes
    parsed: Any
    raw: dict


def schema_fingerprint(schema: dict) -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form, little-endian bytes."""
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class SchemaRegistry:
    """All schemas this process knows: current ones by name, every one (incl. history) by fingerprint."""

    def __init__(self, schema_dir: Path) -> None:
        self.schema_dir = Path(schema_dir)
        self.current: dict[str, SchemaEntry] = {}
        self.by_fingerprint: dict[bytes, SchemaEntry] = {}
        files = sorted(self.schema_dir.glob("*.avsc"))
        if not files:
            raise FileNotFoundError(f"no .avsc files in {self.schema_dir}")
        for path in files:
            entry = self.add(json.loads(path.read_text()))
            self.current[entry.name] = entry
        for path in sorted((self.schema_dir / "history").glob("*.avsc")):
            self.add(json.loads(path.read_text()))

    def add(self, raw: dict) -> SchemaEntry:
        """Register a writer schema (e.g. an older version) so messages written with it can be read."""
        parsed = parse_schema(raw)
        name = f"{raw['namespace']}.{raw['name']}" if "namespace" in raw and "." not in raw["name"] else raw["name"]
        entry = SchemaEntry(name=name, fingerprint=schema_fingerprint(raw), parsed=parsed, raw=raw)
        self.by_fingerprint[entry.fingerprint] = entry
        return entry


class AvroCodec:
    """Encode records to single-object Avro and decode them back into record instances."""

    def __init__(self, schema_dir: Path) -> None:
        self.schema_dir = Path(schema_dir)
        self._registry: Optional[SchemaRegistry] = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> SchemaRegistry:
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    self._registry = SchemaRegistry(self.schema_dir)
        return self._registry

    def encode(self, record: AvroRecord) -> bytes:
        entry = self.registry.current.get(record.AVRO_NAME)
        if entry is None:
            raise CodecError("unknown_schema", f"no schema for record {record.AVRO_NAME}")
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(entry.fingerprint)
        try:
            fastavro.schemaless_writer(buf, entry.parsed, record.to_avro())
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise CodecError("encode_failed", f"{record.AVRO_NAME}: {exc}") from exc
        return buf.getvalue()

    def decode_dict(self, data: bytes, topic: Optional[str] = None, expect: Optional[str] = None) -> tuple[str, dict]:
        """Decode to ``(schema full name, dict)``; reader schema = current schema of that name."""
        if data is None:
            raise CodecError("empty_value", "message has no value (tombstone?)", topic)
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise CodecError("bad_magic", "not an Avro single-object message (missing C3 01 header)", topic)
        writer = self.registry.by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if writer is None:
            raise CodecError("unknown_fingerprint", f"writer schema {data[2:HEADER_LEN].hex()} is unknown", topic)
        if expect is not None and writer.name != expect:
            raise CodecError("unexpected_schema", f"expected {expect}, message was written as {writer.name}", topic)
        reader = self.registry.current.get(writer.name, writer)
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            value = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed if reader is not writer else None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError, ...
            raise CodecError("malformed_body", f"{writer.name}: {type(exc).__name__}: {exc}", topic) from exc
        if buf.tell() != len(data):
            raise CodecError("trailing_bytes", f"{writer.name}: {len(data) - buf.tell()} bytes after the record", topic)
        return writer.name, value

    def decode(self, data: bytes, topic: Optional[str] = None, expect: Optional[str] = None) -> AvroRecord:
        name, value = self.decode_dict(data, topic, expect)
        cls = RECORDS.get(name)
        if cls is None:
            raise CodecError("no_record_class", f"no record class for {name}", topic)
        try:
            return cls.from_avro(value)
        except TypeError as exc:
            raise CodecError("record_mismatch", f"{name}: {exc}", topic) from exc


_default: Optional[AvroCodec] = None
_default_lock = threading.Lock()


def get_codec(schema_dir: Optional[Path] = None) -> AvroCodec:
    """The process-wide codec (schemas parsed once)."""
    global _default
    if schema_dir is not None:
        return AvroCodec(schema_dir)
    if _default is None:
        with _default_lock:
            if _default is None:
                from .settings import get_settings

                _default = AvroCodec(get_settings().schema_dir)
    return _default


def to_jsonable(value: Any) -> Any:
    """Make a decoded dict printable as JSON (datetimes as ISO-8601, bytes as hex)."""
    from datetime import datetime

    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def register_faust_codec(name: str = "avro") -> None:
    """Register the codec with Faust so topics can use ``value_serializer="avro"``."""
    from faust.serializers import codecs

    class FaustAvroCodec(codecs.Codec):
        def _dumps(self, obj: Any) -> bytes:
            return get_codec().encode(obj)

        def _loads(self, s: bytes) -> Any:
            return get_codec().decode(s)

    codecs.register(name, FaustAvroCodec())
