"""TFRecord files of ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a run of records, each framed as: the data's length (uint64, little-endian),
the masked CRC-32C of those 8 bytes (uint32), the data, the masked CRC-32C of the data. The data
is a serialized ``tf.train.Example``; its message types are declared here from their published
field numbers and parsed by protobuf's own parser (protobuf is already installed with tensorboard).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from casdap.data.crc32c import masked_crc32c
from casdap.errors import CasdapError

__all__ = ["HEADER", "FOOTER", "scan_records", "check_header", "check_record", "parse_example", "frame_record"]

HEADER = 12  # length (8) + its CRC (4)
FOOTER = 4  # the data's CRC


def frame_record(data: bytes) -> bytes:
    """One record as a TFRecord file holds it (what the tests and benchmarks write)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def check_header(path: Path, offset: int, header: bytes) -> int:
    """The data length of the record at ``offset``, after its length's CRC is checked."""
    if len(header) < HEADER:
        raise CasdapError(f"TFRecord file '{path}' is truncated: a record header at byte {offset} is cut short. "
                          "Copy or prepare the data set again")
    length, crc = struct.unpack("<QI", header[:HEADER])
    if masked_crc32c(header[:8]) != crc:
        raise CasdapError(f"TFRecord file '{path}' is corrupt: the length of the record at byte {offset} fails "
                          "its CRC. Copy or prepare the data set again")
    return length


def check_record(path: Path, offset: int, length: int, body: bytes) -> bytes:
    """The record's data, after its CRC is checked (``body``: data and its 4-byte CRC)."""
    if len(body) < length + FOOTER:
        raise CasdapError(f"TFRecord file '{path}' is truncated: the record at byte {offset} needs "
                          f"{length + FOOTER} bytes, {len(body)} are left. Copy or prepare the data set again")
    data = body[:length]
    if masked_crc32c(data) != struct.unpack("<I", body[length:length + FOOTER])[0]:
        raise CasdapError(f"TFRecord file '{path}' is corrupt: the record at byte {offset} fails its CRC. "
                          "Copy or prepare the data set again")
    return data


def scan_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` of every record of one file, in file order, each CRC checked."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(HEADER)
            if not header:
                return
            length = check_header(path, offset, header)
            yield offset, check_record(path, offset, length, f.read(length + FOOTER))
            offset += HEADER + length + FOOTER


@lru_cache(maxsize=1)
def _example_class():
    """``tf.train.Example`` and the messages it holds, declared with TensorFlow's field numbers."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="casdap/tf_example.proto", package="casdap.tfexample",
                                             syntax="proto3")
    f = descriptor_pb2.FieldDescriptorProto
    repeated, optional = f.LABEL_REPEATED, f.LABEL_OPTIONAL

    def message(name, *fields, map_entry=False):
        m = fdp.message_type.add(name=name)
        if map_entry:
            m.options.map_entry = True
        for number, (field, label, kind, type_name) in enumerate(fields, 1):
            m.field.add(name=field, number=number, label=label, type=kind, type_name=type_name)
        return m

    message("BytesList", ("value", repeated, f.TYPE_BYTES, None))
    message("FloatList", ("value", repeated, f.TYPE_FLOAT, None))
    message("Int64List", ("value", repeated, f.TYPE_INT64, None))
    feature = message("Feature", ("bytes_list", optional, f.TYPE_MESSAGE, ".casdap.tfexample.BytesList"),
                      ("float_list", optional, f.TYPE_MESSAGE, ".casdap.tfexample.FloatList"),
                      ("int64_list", optional, f.TYPE_MESSAGE, ".casdap.tfexample.Int64List"))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", ("feature", repeated, f.TYPE_MESSAGE, ".casdap.tfexample.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=optional, type=f.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional, type=f.TYPE_MESSAGE, type_name=".casdap.tfexample.Feature")
    message("Example", ("features", optional, f.TYPE_MESSAGE, ".casdap.tfexample.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("casdap.tfexample.Example")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def example_class():
    """The ``Example`` message class (also for writing records)."""
    return _example_class()


def parse_example(data: bytes, path: Path, offset: int, keys: dict[str, str]) -> dict[str, object]:
    """The features named in ``keys`` (name -> ``bytes`` or ``int64``) of one serialized Example:
    the first value of each."""
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError:
        raise CasdapError(f"TFRecord file '{path}': the record at byte {offset} is not a tf.train.Example") from None
    out = {}
    for key, kind in keys.items():
        feature = example.features.feature.get(key)
        values = None if feature is None else (feature.bytes_list if kind == "bytes" else feature.int64_list).value
        if not values:
            raise CasdapError(f"TFRecord file '{path}': the record at byte {offset} has no {kind} feature '{key}' "
                              f"(it has {', '.join(sorted(example.features.feature)) or 'none'})")
        out[key] = values[0]
    return out
