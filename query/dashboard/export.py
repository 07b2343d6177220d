"""`GET /v1/bot/{botId}/export`: a bot's data for a range as CSV or JSON lines — the `dataPoints`
buckets (exactly the API's, `query.stats.buckets`) or every stored post. Posts are read in
key-ordered pages of `PAGE_ROWS` (by `(ts, event_id)`, so none is skipped or repeated) and
written as each page arrives: an export never holds more than one page. Same privacy rule as the
API: a private bot is 404 to anyone but its owner (key or signed-in session)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from botpulse.query import params
from botpulse.query.params import BadParam
from botpulse.query.resources import SETTINGS, STORE
from botpulse.query.responses import error
from botpulse.query.stats import AVG_FIELDS, LAST_FIELDS, buckets
from botpulse.query.uptime import now_ms

DAY_MS = 86_400_000
PAGE_ROWS = 5000
FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
DATA = ("buckets", "posts")
FIELDS = [*LAST_FIELDS, *AVG_FIELDS]
_POST_COLUMNS = ["guilds", "users", "shards", "ramTotal", "apiPing", "ramUsage", "cpu", "bandwidth"]

POSTS_SQL = (
    "SELECT toUnixTimestamp64Milli(ts) AS t, event_id, guilds, users, shards, ram_total, api_ping,"
    " ram_usage, cpu, bandwidth, custom FROM bot_stats WHERE bot_id = {id:String}"
    " AND ts >= fromUnixTimestamp64Milli(greatest({start:Int64}, {after_t:Int64}), 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')"
    " AND (t, event_id) > ({after_t:Int64}, {after_id:String})"
    " ORDER BY t, event_id LIMIT {rows:UInt32}"
)

_json = msgspec.json.Encoder()


def _iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _cell(value: Any) -> Any:
    """Spreadsheets run a cell that starts like a formula: such text gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _csv_line(values: Iterable[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return out.getvalue().encode()


class ExportRequest(msgspec.Struct, frozen=True):
    fmt: str
    data: str
    start: int
    end: int
    points: int


def parse(query: Any, max_days: int) -> ExportRequest:
    fmt = query.get("format", "csv")
    if fmt not in FORMATS:
        raise BadParam("format", "format must be csv or jsonl")
    data = query.get("data", "buckets")
    if data not in DATA:
        raise BadParam("data", "data must be buckets or posts")
    points = params.integer("dataPoints", query.get("dataPoints"), default=90, lo=1, hi=1000)
    end = params.timestamp_ms("end", query["end"]) if query.get("end") else now_ms()
    start = params.timestamp_ms("start", query["start"]) if query.get("start") else end - DAY_MS
    if start >= end:
        raise BadParam("start", "start must be before end")
    if end - start > max_days * DAY_MS:
        raise BadParam("start", f"an export covers at most {max_days} days (BOTPULSE_EXPORT_MAX_DAYS)")
    return ExportRequest(fmt, data, start, end, points)


async def export(request: web.Request) -> web.StreamResponse:
    from botpulse.query.app import visible_bot  # the API's own privacy rule (app imports us)

    bot_id = request.match_info["botId"]
    try:
        params.bot_id("botId", bot_id)
        req = parse(request.query, request.app[SETTINGS].export_max_days)
    except BadParam as exc:
        return error(400, exc.message, exc.field)
    if await visible_bot(request, bot_id) is None:
        return error(404, "Bot not found")
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in bot_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{FORMATS[req.fmt]}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="bot-{safe_id}-{req.data}.{req.fmt}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    if req.data == "buckets":
        await _buckets(request, response, bot_id, req)
    else:
        await _posts(request, response, bot_id, req)
    await response.write_eof()
    return response


async def _buckets(
    request: web.Request, response: web.StreamResponse, bot_id: str, req: ExportRequest
) -> None:
    rows = await buckets(request.app[STORE], bot_id, req.start, req.end, req.points, [])
    names = sorted(rows[0]["custom"]) if rows else []
    await response.prepare(request)
    if req.fmt == "csv":
        await response.write(_csv_line(["time", "timestamp", *FIELDS, *(f"custom.{n}" for n in names)]))
        for b in rows:
            line = [_iso(b["time"]), b["time"], *(b[f] for f in FIELDS), *(b["custom"][n] for n in names)]
            await response.write(_csv_line(line))
        return
    for b in rows:
        await response.write(_json.encode(b) + b"\n")


async def _posts(request: web.Request, response: web.StreamResponse, bot_id: str, req: ExportRequest) -> None:
    store = request.app[STORE]
    await response.prepare(request)
    if req.fmt == "csv":
        await response.write(_csv_line(["time", "timestamp", "eventId", *_POST_COLUMNS, "custom"]))
    after_t, after_id = req.start - 1, ""
    while True:
        page = await store.query(
            POSTS_SQL,
            {
                "id": bot_id,
                "start": req.start,
                "end": req.end,
                "after_t": after_t,
                "after_id": after_id,
                "rows": PAGE_ROWS,
            },
        )
        chunk = bytearray()
        for t, event_id, *values, custom in page:
            t = int(t)
            if req.fmt == "csv":
                chunk += _csv_line([_iso(t), t, event_id, *values, _json.encode(dict(custom)).decode()])
            else:
                post = {"time": t, "eventId": event_id, **dict(zip(_POST_COLUMNS, values, strict=True))}
                post["custom"] = dict(custom)
                chunk += _json.encode(post) + b"\n"
        if chunk:
            await response.write(bytes(chunk))
        if len(page) < PAGE_ROWS:
            return
        after_t, after_id = int(page[-1][0]), page[-1][1]
