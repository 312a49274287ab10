"""Tables and result files for the test scripts: a markdown table on stdout, the same figures in JSON
(and CSV)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from utils.checkpoint import atomic_write_text


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers, rows, digits: int = 4) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None  # JSON has no nan/inf
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def json_text(data: dict) -> str:
    """The JSON of a result: nan and inf become null."""
    return json.dumps(_clean(data), indent=2) + "\n"


def write_json(path, data: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, json_text(data))
    return path


def csv_text(headers, rows) -> str:
    """CSV text; None, nan and inf become empty cells, floats keep full precision."""
    import csv
    import io

    def cell(v):
        if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
            return ""
        return repr(v) if isinstance(v, float) else v

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([[cell(v) for v in row] for row in rows])
    return buf.getvalue()


def write_csv(path, headers, rows) -> Path:
    """A CSV file (atomic write), as csv_text."""
    path = Path(path)
    atomic_write_text(path, csv_text(headers, rows))
    return path
