"""Batch RPCs on tables in the store: ``input`` (a StoreInput) instead of inline rows.

:func:`stored_batch` wraps a servicer's batch method. Without ``input`` the call is the inline
one, unchanged. With it, the wrapper reads the Parquet table at ``input.key`` (in the server's
store or a prefix below it, :func:`htvs.store.store_within`), turns its rows into the request's
row messages, calls the method (in chunks of the server's row limit where rows are independent),
and writes the response's row lists as Parquet tables, the rest as ``summary.json``, under a
content-addressed prefix with a manifest (:func:`htvs.store.run_cached`: the key covers the
method, the input's key and SHA-256 and the request's options, so a repeated call reads the
finished result). The answer carries ``output`` (keys and row counts) and the summary fields.

Conversions go through the protobuf descriptors, so every batch method shares them: a column
is a field of the row message (other columns are ignored, nulls and NaN are unset fields); a
list of strings reads the column named like the list, its singular, or the only column.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from htvs.errors import InvalidInput
from htvs.store import content_hash, manifest_key_of, run_cached, store_within, validate_key

SUMMARY = "summary"


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def as_plain(message: Message) -> dict[str, Any]:
    """The fields set in ``message`` as builtins (enums by name, nested messages as dicts)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            out[field.name] = [as_plain(v) for v in value] if _is_repeated(field) else as_plain(value)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            names = field.enum_type.values_by_number
            out[field.name] = [names[v].name for v in value] if _is_repeated(field) else names[value].name
        else:
            out[field.name] = list(value) if _is_repeated(field) else value
    return out


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _clean(value: Any) -> Any:
    """A table cell made JSON-ready for ``ParseDict``: nulls and NaN dropped from dicts."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not _unset(v)}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def table_rows(table, field: FieldDescriptor, key: str) -> list[Any]:
    """The rows of ``table`` as values of the repeated ``field`` (dicts for a message field)."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        names = table.column_names
        for name in (field.name, field.name.removesuffix("s")):
            if name in names:
                return table.column(name).to_pylist()
        if len(names) == 1:
            return table.column(0).to_pylist()
        raise InvalidInput(f"input {key!r}: no column {field.name!r} or {field.name.removesuffix('s')!r} "
                           f"(columns: {names})")
    known = set(field.message_type.fields_by_name)
    columns = [c for c in table.column_names if c in known]
    if not columns:
        raise InvalidInput(f"input {key!r}: none of its columns {table.column_names} is a field of "
                           f"{field.message_type.name} ({sorted(known)})")
    return [_clean(row) for row in table.select(columns).to_pylist()]


_INTEGERS = (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT32,
             FieldDescriptor.CPPTYPE_UINT64)


def _add_counts(total: Message, part: Message) -> None:
    """``total += part`` for every integer field of a counts message (nested ones too)."""
    for field in part.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(field):
            _add_counts(getattr(total, field.name), getattr(part, field.name))
        elif field.cpp_type in _INTEGERS and not _is_repeated(field):
            setattr(total, field.name, getattr(total, field.name) + getattr(part, field.name))


def _merge(total: Message, part: Message, summed: tuple[str, ...]) -> None:
    """Fold ``part`` (one later chunk's answer) into ``total`` (the first chunk's, row lists
    cleared): the ``summed`` fields (counts, or messages of counts) add up; every other field
    keeps the first chunk's value (model descriptions, limits applied)."""
    for name in summed:
        field = part.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _add_counts(getattr(total, name), getattr(part, name))
        else:
            setattr(total, name, getattr(total, name) + getattr(part, name))


def stored_batch(rows_field: str, outputs: tuple[str, ...], response: type[Message], *, rowwise: bool = True,
                 summed: tuple[str, ...] = (), chunk_request: Callable[[Message, int], None] | None = None):
    """Let a batch method take its rows from the store (see the module docstring).

    Args:
        rows_field: the request's repeated field of rows.
        outputs: the response's row lists written as tables.
        response: the method's response message class.
        summed: response fields that are counts over the rows (integers, or messages of
            integers), added up over the chunks; other fields keep the first chunk's value.
        rowwise: rows are independent, so a large table is processed in chunks of the servicer's
            ``max_batch_rows``; False: one call (the method's own limit applies).
        chunk_request: called with each chunk's request and the table row it starts at, before
            the method, to adjust options per chunk (e.g. a seed per chunk, so that chunks do not
            repeat the first one's random numbers); None: every chunk has the request's options.

    The servicer needs ``store`` (the server's ArtifactStore or None) and ``service_name``.
    """

    def decorate(method: Callable[[Any, Any, grpc.ServicerContext], Message]):
        @functools.wraps(method)
        def wrapper(self, request: Message, context: grpc.ServicerContext) -> Message:
            if not request.HasField("input"):
                return method(self, request, context)
            return _from_store(self, method, request, context, rows_field, outputs, response, rowwise, summed,
                               chunk_request)

        return wrapper

    return decorate


def _from_store(servicer, method, request, context, rows_field: str, outputs: tuple[str, ...], response,
                rowwise: bool, summed: tuple[str, ...], chunk_request: Callable[[Message, int], None] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = f"{servicer.service_name.rpartition('.')[2]}.{method.__name__}"
    if len(getattr(request, rows_field)):
        raise InvalidInput(f"{name}: send rows inline ({rows_field}) or input, not both")
    if getattr(servicer, "store", None) is None:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                      f"{name}: this server has no store; start it with --store URL or HTVS_STORE")
    store = store_within(servicer.store, request.input.store_url)
    key = validate_key(request.input.key)
    data = store.get_bytes(key)
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"input {key!r} is not a Parquet table: {str(exc)[:200]}") from None
    field = request.DESCRIPTOR.fields_by_name[rows_field]
    rows = table_rows(table, field, key)
    if not rows:
        raise InvalidInput(f"input {key!r} has no rows")
    options = type(request)()
    options.CopyFrom(request)
    options.ClearField("input")
    step_size = max(1, int(getattr(servicer, "max_batch_rows", len(rows)))) if rowwise else len(rows)
    summary_holder: dict[str, Message] = {}

    def step(out_store, prefix: str):
        total = None
        collected: dict[str, list[dict]] = {o: [] for o in outputs}
        for start in range(0, len(rows), step_size):
            if not context.is_active():  # the caller has gone (cancelled, deadline): stop here
                context.abort(grpc.StatusCode.CANCELLED, f"{name}: the caller went away after {start} rows")
            chunk = type(request)()
            chunk.CopyFrom(options)
            try:
                json_format.ParseDict({rows_field: rows[start: start + step_size]}, chunk, ignore_unknown_fields=True)
            except json_format.ParseError as exc:
                raise InvalidInput(f"input {key!r}: rows from {start} do not fit {field.message_type.name if field.message_type else rows_field}: {exc}") from None
            if chunk_request is not None:
                chunk_request(chunk, start)
            answer = method(servicer, chunk, context)
            for output in outputs:
                for row in getattr(answer, output):
                    plain = as_plain(row) if isinstance(row, Message) else row
                    if isinstance(plain, dict) and isinstance(plain.get("error"), dict):
                        plain["error"]["index"] = plain["error"].get("index", 0) + start  # in the table
                    collected[output].append(plain)
            if total is None:
                total = response()
                total.CopyFrom(answer)
                for output in outputs:
                    total.ClearField(output)
            else:
                _merge(total, answer, summed)
        keys, counts = [], {}
        for output in outputs:
            values = collected[output]
            if values and isinstance(values[0], dict):  # every field set in any row is a column
                names = list(dict.fromkeys(name for row in values for name in row))
                table_out = pa.table({name: [row.get(name) for row in values] for name in names})
            else:
                table_out = pa.table({output: pa.array(values, type=pa.string() if not values else None)})
            keys.append(f"{prefix}/{output}.parquet")
            out_store.put_table(keys[-1], table_out)
            counts[output] = len(values)
        keys.append(f"{prefix}/{SUMMARY}.json")
        out_store.put_json(keys[-1], as_plain(total))
        summary_holder["total"] = total
        return keys, counts

    config = {"request": as_plain(options), "input_sha256": content_hash(data)}
    manifest = run_cached(store, name, config, [key], step)
    answer = summary_holder.get("total")
    if answer is None:  # a finished result: the summary from the store
        answer = response()
        json_format.ParseDict(store.get_json(_key_named(manifest, f"{SUMMARY}.json")), answer)
    answer.output.store_url = store.url
    answer.output.manifest_key = manifest_key_of(manifest)
    for written in manifest.output_keys:
        answer.output.keys[written.rsplit("/", 1)[-1].split(".")[0]] = written
    for output, count in manifest.row_counts.items():
        answer.output.rows[output] = count
    return answer


def _key_named(manifest, file_name: str) -> str:
    return next(k for k in manifest.output_keys if k.rsplit("/", 1)[-1] == file_name)
