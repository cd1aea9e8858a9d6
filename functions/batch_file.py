"""Reading a batch file: `<name>.batch.yaml|.yml`, `.batch.jsonl` or `.batch.csv` → a `BatchPlan`.

Each item is merged over the batch's `defaults` (nested mappings merge; the item wins) and validated
with `parse_brief`, one by one: a bad item becomes a `BatchEntry` with its error code and line, never
an error of the whole file. Only a file that cannot be read as a batch at all raises.

- YAML: a mapping `{defaults: {...}, webhook: {url, item_events}, items: [...]}`; lines come from the
  YAML nodes, so an item's line is where it starts in the file.
- JSONL: one brief per line. A first line that has a `defaults` key (no brief has one) is the header:
  `{"defaults": {...}, "webhook": {...}}`. Blank lines are skipped; an unreadable line fails its item.
- CSV: a header row names brief fields; dotted names reach nested fields (`wav2lip.width`); an empty
  cell leaves the field unset (so the default applies). Cells are text and pydantic converts them
  (`"8"` → 8). Lines starting with `#` before the header are a YAML block of batch options
  (`# webhook: {url: ..., item_events: true}`, `# defaults: {model: tiny}`), since CSV has no place for them.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.batch import (
    ITEM_EVENTS,
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    BatchEntry,
    BatchPlan,
    BatchWebhookSpec,
    is_batch_key,
)
from schemas.brief import parse_brief, validation_error_to_videostudio
from schemas.errors import ErrorInfo, VideostudioError

HEADER_KEYS = {"defaults", "webhook"}


class BatchFileFormat:
    """The seam core/ is handed (core/batch_expand.py `BatchFormat`): which keys are batches, and their parse."""

    def matches(self, key: str) -> bool:
        return is_batch_key(key)

    def parse(self, data: bytes, key: str) -> BatchPlan:
        return parse_batch_file(data, key)


def parse_batch_file(data: bytes, key: str) -> BatchPlan:
    """The plan of a batch file; raises `VideostudioError` only when the file as a whole is unreadable."""
    if len(data) > MAX_BATCH_BYTES:
        raise VideostudioError("batch_too_large", f"batch file is {len(data)} bytes; the limit is {MAX_BATCH_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VideostudioError("invalid_encoding", f"batch file is not UTF-8 text: {exc.reason}") from None
    lower = key.lower()
    if lower.endswith(".csv"):
        header, rows = _csv_rows(text)
    elif lower.endswith(".jsonl"):
        header, rows = _jsonl_rows(text)
    else:
        header, rows = _yaml_rows(text)
    defaults, webhook = _header(header)
    if not rows:
        raise VideostudioError("empty_batch", "the batch lists no items")
    if len(rows) > MAX_BATCH_ITEMS:
        raise VideostudioError("batch_too_large", f"the batch lists {len(rows)} items; the limit is {MAX_BATCH_ITEMS}")
    entries = [_entry(index, line, item, defaults, webhook) for index, (line, item) in enumerate(rows)]
    return BatchPlan(webhook=webhook, entries=entries)


# ---------------------------------------------------------------------------------------------- items
def merge(defaults: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """`item` over `defaults`; nested mappings (wav2lip:, webhook:) merge key by key."""
    out = dict(defaults)
    for name, value in item.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = merge(out[name], value)
        else:
            out[name] = value
    return out


def _entry(index: int, line: int, item: Any, defaults: dict[str, Any],
           webhook: BatchWebhookSpec | None) -> BatchEntry:
    if isinstance(item, ErrorInfo):  # the row could not even be read
        return BatchEntry(index=index, line=line, error=item)
    if not isinstance(item, dict):
        return BatchEntry(index=index, line=line, error=ErrorInfo(
            code="invalid_brief", message=f"an item is a mapping of brief fields, got {type(item).__name__}"))
    document = merge(defaults, item)
    if webhook is not None and webhook.item_events and "webhook" not in document:
        document["webhook"] = {"url": str(webhook.url), "events": list(ITEM_EVENTS)}
    try:
        brief = parse_brief(json.dumps(document).encode(), "item.json")
    except VideostudioError as exc:
        return BatchEntry(index=index, line=line, error=exc.info())
    except (TypeError, ValueError) as exc:  # a YAML value JSON cannot carry (a date, a set)
        return BatchEntry(index=index, line=line, error=ErrorInfo(code="invalid_field_type", message=str(exc)[:300]))
    # The validated brief's own values (CSV text "8" becomes 8), only the fields the item and defaults set.
    return BatchEntry(index=index, line=line, kind=brief.kind,
                      document=brief.model_dump(mode="json", exclude_unset=True))


def _header(header: Any) -> tuple[dict[str, Any], BatchWebhookSpec | None]:
    if header is None:
        return {}, None
    if not isinstance(header, dict):
        raise VideostudioError("invalid_batch", f"batch options are a mapping, got {type(header).__name__}")
    unknown = set(header) - HEADER_KEYS
    if unknown:
        raise VideostudioError("unknown_field", f"unknown batch option(s): {', '.join(sorted(map(str, unknown)))} "
                               f"(known: defaults, webhook, items)")
    defaults = header.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise VideostudioError("invalid_batch", f"`defaults:` is a mapping of brief fields, got {type(defaults).__name__}")
    webhook = None
    if header.get("webhook") is not None:
        try:
            webhook = BatchWebhookSpec.model_validate(header["webhook"])
        except ValidationError as exc:
            error = validation_error_to_videostudio(exc)
            raise VideostudioError(error.code, f"batch webhook: {error.message}") from None
    return defaults, webhook


# ---------------------------------------------------------------------------------------------- YAML
def _yaml_rows(text: str) -> tuple[dict[str, Any] | None, list[tuple[int, Any]]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        raise VideostudioError("invalid_yaml", f"not valid YAML: {getattr(exc, 'problem', None) or exc}{at}") from None
    except (RecursionError, ValueError) as exc:
        raise VideostudioError("invalid_yaml", f"not valid YAML: {str(exc)[:200]}") from None
    if not isinstance(document, dict) or not isinstance(node, yaml.MappingNode):
        raise VideostudioError("invalid_batch", "a YAML batch is a mapping with `items:` (and `defaults:`, `webhook:`)")
    items = document.get("items")
    if not isinstance(items, list):
        raise VideostudioError("missing_field", "a YAML batch needs `items:`, a list of briefs")
    item_nodes = next((value for name, value in node.value if getattr(name, "value", None) == "items"), None)
    lines = [child.start_mark.line + 1 for child in item_nodes.value] if isinstance(item_nodes, yaml.SequenceNode) else []
    header = {name: value for name, value in document.items() if name != "items"}
    return header, [(lines[i] if i < len(lines) else 1, item) for i, item in enumerate(items)]


# ---------------------------------------------------------------------------------------------- JSONL
def _jsonl_rows(text: str) -> tuple[dict[str, Any] | None, list[tuple[int, Any]]]:
    header: dict[str, Any] | None = None
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value: Any = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:200]
            value = ErrorInfo(code="invalid_json", message=f"line {number} is not valid JSON: {message}")
        if header is None and not rows and isinstance(value, dict) and "defaults" in value:
            header = value  # the optional first line: batch options
            continue
        rows.append((number, value))
    return header, rows


# ---------------------------------------------------------------------------------------------- CSV
def _csv_rows(text: str) -> tuple[dict[str, Any] | None, list[tuple[int, Any]]]:
    lines = text.splitlines(keepends=True)
    comments = 0
    while comments < len(lines) and (lines[comments].startswith("#") or not lines[comments].strip()):
        comments += 1
    header = None
    block = "".join(line[1:] if line.startswith("#") else line for line in lines[:comments])
    if block.strip():
        try:
            header = yaml.safe_load(block)
        except yaml.YAMLError as exc:
            raise VideostudioError("invalid_yaml", f"the `#` options before the CSV header are not YAML: {exc}") from None
    reader = csv.reader(io.StringIO("".join(lines[comments:])))
    try:
        columns = next(reader)
    except StopIteration:
        raise VideostudioError("empty_batch", "the CSV has no header row") from None
    except csv.Error as exc:
        raise VideostudioError("invalid_csv", f"the CSV header is unreadable: {exc}") from None
    columns = [column.strip() for column in columns]
    if not any(columns) or len(set(columns)) != len(columns) or "" in columns:
        raise VideostudioError("invalid_csv", "the CSV header needs one non-empty, distinct name per column")
    rows: list[tuple[int, Any]] = []
    end = reader.line_num  # physical lines of the CSV part consumed so far (a quoted cell may span lines)
    while True:
        start = comments + end + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            rows.append((start, ErrorInfo(code="invalid_csv", message=f"unreadable row: {exc}")))
            continue
        end = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line is no item
        rows.append((start, _csv_item(columns, cells)))
    return header, rows


def _csv_item(columns: list[str], cells: list[str]) -> dict[str, Any] | ErrorInfo:
    if len(cells) != len(columns):
        return ErrorInfo(code="invalid_csv", message=f"the row has {len(cells)} cells; the header names {len(columns)}")
    item: dict[str, Any] = {}
    for column, cell in zip(columns, cells):
        if cell == "":
            continue  # empty cell: the field stays unset
        *parents, leaf = column.split(".")
        target = item
        for part in parents:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                return ErrorInfo(code="invalid_csv", message=f"column {column!r} nests under a field that has a value")
            target = child
        target[leaf] = cell
    return item
