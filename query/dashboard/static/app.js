/* botpulse dashboard: every number on a page comes from the public query API (the same
   routes any client uses). Text from the API is only ever set with textContent. */
"use strict";
(function () {
  const MIN = 60000, HOUR = 3600000, DAY = 86400000;
  const base = document.body.dataset.base || "";
  const page = document.body.dataset.page;

  // --- formatting ---------------------------------------------------------------------------
  const localFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const numFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  function localTime(ms) { return localFmt.format(new Date(ms)); }
  function utcTime(ms) { return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }
  function fmtNum(v) { return v == null ? "—" : numFmt.format(v); }
  function fmtCompact(v, digits) {
    if (v == null) return "—";
    const a = Math.abs(v), d = digits == null ? 1 : digits;
    for (const [size, unit] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
      if (a >= size) return (v / size).toFixed(d).replace(/\.?0+$/, "") + unit;
    }
    return numFmt.format(Math.round(v * 100) / 100);
  }
  function fmtBytes(v, digits) {
    if (v == null) return "—";
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let i = 0, x = Math.abs(v);
    while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
    return (v < 0 ? "-" : "") + (i === 0 ? String(Math.round(x)) : x.toFixed(digits == null ? 1 : digits)) + " " + units[i];
  }
  // Axis ticks: as short as the numbers allow, more digits when short ones would repeat.
  function ticks(fmt) {
    return (u, vals) => {
      for (const d of [1, 2, 3]) {
        const out = vals.map((v) => fmt(v, d));
        if (new Set(out).size === out.length) return out;
      }
      return vals.map((v) => fmt(v, 3));
    };
  }
  function fmtDuration(ms) {
    const m = Math.round(ms / MIN);
    if (m < 60) return m + " min";
    if (m < 1440) return Math.floor(m / 60) + " h " + (m % 60) + " min";
    return Math.floor(m / 1440) + " d " + Math.floor((m % 1440) / 60) + " h";
  }
  function ago(ms) {
    const d = Date.now() - ms;
    if (d < MIN) return "just now";
    if (d < HOUR) return Math.floor(d / MIN) + " min ago";
    if (d < DAY) return Math.floor(d / HOUR) + " h ago";
    return Math.floor(d / DAY) + " d ago";
  }
  function pct(v) { return v == null ? "—" : (Math.floor(v * 100) / 100).toFixed(2) + "%"; }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function timeEl(ms, text) {
    const t = el("time", { datetime: new Date(ms).toISOString(), title: utcTime(ms) }, text || localTime(ms));
    return t;
  }
  async function api(path, anon) {
    const r = await fetch(base + path, { credentials: anon ? "omit" : "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }
  function enc(id) { return encodeURIComponent(id); }

  // Server-rendered <time> elements: the viewer's zone, UTC on hover.
  for (const t of document.querySelectorAll("time[datetime]")) {
    const ms = Date.parse(t.getAttribute("datetime"));
    if (!isNaN(ms)) { t.textContent = localTime(ms); t.title = utcTime(ms); }
  }
  for (const b of document.querySelectorAll("[data-copy]")) {
    b.addEventListener("click", async () => {
      const src = document.getElementById(b.dataset.copy);
      src.select();
      try { await navigator.clipboard.writeText(src.value); } catch (e) { document.execCommand("copy"); }
      b.textContent = "Copied";
    });
  }

  // --- uptime bar (bot page and status page) -------------------------------------------------
  function offlineIn(periods, a, b) {
    let off = 0;
    for (const p of periods) off += Math.max(0, Math.min(p.to, b) - Math.max(p.from, a));
    return off;
  }
  function utcMidnight(ms) { return Math.floor(ms / DAY) * DAY; }
  async function ninetyDays(id, anon) {
    const now = Date.now();
    const start = utcMidnight(now) - 89 * DAY;
    const up = await api(`/v1/bot/${enc(id)}/uptime?start=${start}&end=${now}`, anon);
    return { start: up.start, end: up.end, periods: up.offline, truncated: up.offlineTruncated };
  }
  async function dayCells(id, ninety, createdAt, anon) {
    const cells = [];
    for (let d = 0; d < 90; d++) {
      const a = ninety.start + d * DAY, b = Math.min(a + DAY, ninety.end);
      const cell = { day: new Date(a).toISOString().slice(0, 10), start: a, end: b, pct: null, off: 0 };
      if (b > createdAt && b > a) {
        if (ninety.truncated) {
          const u = await api(`/v1/bot/${enc(id)}/uptime?start=${a}&end=${b}`, anon);
          cell.off = (b - a) - u.uptime;
        } else {
          cell.off = offlineIn(ninety.periods, a, b);
        }
        cell.pct = 100 * ((b - a) - cell.off) / (b - a);
      }
      cells.push(cell);
    }
    return cells;
  }
  function drawBar(container, cells) {
    container.replaceChildren();
    for (const c of cells) {
      let cls = "cell";
      if (c.pct != null) cls += c.pct >= 99.95 ? " u100" : c.pct >= 99 ? " u99" : c.pct >= 95 ? " u95" : c.pct >= 90 ? " u90" : " u0";
      const title = c.pct == null ? `${c.day} (UTC): no data`
        : `${c.day} (UTC): ${pct(c.pct)} up, ${Math.round(c.off / MIN)} min offline`;
      container.appendChild(el("span", {
        class: cls, title, "data-day": c.day, "data-start": c.start, "data-end": c.end,
        "data-pct": c.pct == null ? "" : String(c.pct),
      }));
    }
  }

  // --- bot page -------------------------------------------------------------------------------
  const RANGES = { "24h": [DAY, 288], "7d": [7 * DAY, 336], "30d": [30 * DAY, 720], "90d": [90 * DAY, 540], "1y": [365 * DAY, 365] };
  const COLORS = ["#2563eb", "#db2777", "#16a34a", "#ea580c"];
  function chartDefs(names) {
    const defs = [
      { key: "guilds", title: "Guilds", series: [["guilds", "guilds"]], fmt: fmtCompact },
      { key: "users", title: "Users", series: [["users", "users"]], fmt: fmtCompact },
      { key: "shards", title: "Shards", series: [["shards", "shards"]], fmt: fmtNum },
      { key: "apiPing", title: "API ping", series: [["apiPing", "apiPing"]], fmt: (v) => fmtNum(v) + " ms" },
      { key: "ram", title: "RAM used / total", series: [["ramUsage", "ramUsage"], ["ramTotal", "ramTotal"]], fmt: fmtBytes },
      { key: "cpu", title: "CPU", series: [["cpu", "cpu"]], fmt: (v) => fmtNum(v) + " %" },
      { key: "bandwidth", title: "Bandwidth", series: [["bandwidth", "bandwidth"]], fmt: fmtBytes },
    ];
    for (const n of names) defs.push({ key: "custom:" + n, title: n, series: [[n, n]], custom: true, fmt: fmtCompact });
    return defs;
  }
  function readRange() {
    const q = new URLSearchParams(location.search);
    const now = Date.now();
    if (q.get("from") && q.get("to")) {
      const start = Number(q.get("from")), end = Number(q.get("to"));
      if (start < end) return { name: "custom", start, end, points: Math.max(1, Math.min(1000, Math.round((end - start) / (5 * MIN)))) };
    }
    const name = RANGES[q.get("range")] ? q.get("range") : "24h";
    // The range ends at the end of the bucket that holds now, so every bucket edge sits on a
    // multiple of the bucket width: the 30-day, 90-day and 1-year charts (whole hours) are then
    // read from the hourly roll-up alone.
    const [span, points] = RANGES[name];
    const width = span / points, end = Math.ceil(now / width) * width;
    return { name, start: end - span, end, points };
  }
  function toLocalInput(ms) {
    const d = new Date(ms - new Date(ms).getTimezoneOffset() * MIN);
    return d.toISOString().slice(0, 16);
  }

  async function botPage() {
    const root = document.getElementById("bot");
    const id = root.dataset.bot, createdAt = Number(root.dataset.created);
    const state = { charts: {} };
    window.botpulse = state;
    const css = getComputedStyle(document.body);
    const fg = css.color, grid = css.getPropertyValue("--grid").trim() || "rgba(0,0,0,.07)";

    function chart(container, def, stats) {
      const box = el("div", { class: "chart", "data-chart": def.key });
      box.appendChild(el("h3", {}, def.title));
      container.appendChild(box);
      const xs = stats.map((b) => b.time / 1000);
      const ys = def.series.map(([field]) => stats.map((b) => {
        const v = def.custom ? b.custom[field] : b[field];
        return v == null ? null : v;
      }));
      if (ys.every((s) => s.every((v) => v == null))) box.appendChild(el("p", { class: "empty" }, "No data in this range."));
      const width = Math.max(240, Math.min(container.clientWidth, 1060) - 8);
      const opts = {
        width, height: 200,
        scales: { x: { time: true } },
        series: [
          { value: (u, v) => (v == null ? "—" : localTime(v * 1000)) },
          ...def.series.map(([, label], i) => ({
            label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
            value: (u, v) => (v == null ? "—" : def.fmt(v)),
          })),
        ],
        axes: [
          { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } },
          { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid }, size: 80, values: ticks(def.fmt) },
        ],
      };
      const u = new uPlot(opts, [xs, ...ys], box);
      box.addEventListener("mousemove", (e) => {
        const i = u.cursor.idx;
        if (i != null) box.title = utcTime(xs[i] * 1000);
      });
      state.charts[def.key] = u;
    }

    function setRangeUi(r) {
      for (const b of document.querySelectorAll("#ranges [data-range]")) b.classList.toggle("active", b.dataset.range === r.name);
      document.getElementById("from").value = toLocalInput(r.start);
      document.getElementById("to").value = toLocalInput(r.end);
      const text = document.getElementById("range-text");
      text.replaceChildren(timeEl(r.start), document.createTextNode(" → "), timeEl(r.end),
        document.createTextNode(` · ${r.points} buckets of ${fmtDuration((r.end - r.start) / r.points)}`));
    }

    function exportLinks(r) {
      for (const data of ["buckets", "posts"]) for (const format of ["csv", "jsonl"]) {
        const a = document.getElementById(`export-${data}-${format}`);
        a.href = `${base}/v1/bot/${enc(id)}/export?data=${data}&format=${format}&start=${r.start}&end=${r.end}&dataPoints=${r.points}`;
      }
    }

    function totals(custom) {
      const box = document.getElementById("totals");
      box.replaceChildren();
      const types = Object.keys(custom).sort((a, b) => (a === "command" ? -1 : b === "command" ? 1 : a.localeCompare(b)));
      if (!types.length) box.appendChild(el("p", { class: "muted" }, "No commands or custom events in this range."));
      for (const t of types) {
        const d = el("div", { "data-type": t });
        d.appendChild(el("h3", {}, t === "command" ? "Top commands" : t));
        d.appendChild(el("p", { class: "muted small" }, fmtNum(custom[t].count) + " in the range"));
        const ol = el("ol");
        for (const top of custom[t].top) {
          const li = el("li");
          li.appendChild(el("code", {}, top.value));
          li.appendChild(document.createTextNode(" " + fmtCompact(top.count)));
          ol.appendChild(li);
        }
        d.appendChild(ol);
        box.appendChild(d);
      }
    }

    function offlineList(periods, truncated) {
      const ul = document.getElementById("offline");
      ul.replaceChildren();
      if (!periods.length) ul.appendChild(el("li", { class: "muted" }, "None."));
      for (const p of periods.slice().reverse()) {
        const li = el("li");
        li.append(timeEl(p.from), " → ", timeEl(p.to), ` (${fmtDuration(p.to - p.from)})`);
        ul.appendChild(li);
      }
      if (truncated) ul.appendChild(el("li", { class: "muted" }, "… more periods than can be listed."));
    }

    // The shards' current state (not the range's): one cell per shard, from GET /v1/bot/{id}/shards.
    async function shardGrid() {
      const info = await api(`/v1/bot/${enc(id)}/shards`);
      const card = document.getElementById("shards-card");
      card.hidden = !info.shards.length;
      if (!info.shards.length) return;
      document.getElementById("shards-summary").textContent =
        `${info.shardsUp} of ${info.shardsTotal} up · ${info.connectionState}`;
      const box = document.getElementById("shard-grid");
      box.replaceChildren();
      for (const s of info.shards) {
        const said = s.reportedStatus ? ` (reported ${s.reportedStatus})` : "";
        const title = `Shard ${s.id}: ${s.status}${said} · ${fmtNum(s.guilds)} guilds · `
          + `latency ${s.latency == null ? "—" : fmtNum(s.latency) + " ms"} · `
          + `last seen ${localTime(s.lastSeen)} (${ago(s.lastSeen)})`;
        box.appendChild(el("span", {
          class: "cell " + (s.status === "up" ? "up" : "down"), role: "listitem", title,
          "aria-label": title, "data-shard": String(s.id), "data-status": s.status,
        }, String(s.id)));
      }
      state.shards = info;
    }

    let ninety = null;
    async function load(r) {
      state.range = { start: r.start, end: r.end, dataPoints: r.points, name: r.name };
      setRangeUi(r);
      exportLinks(r);
      const info = await api(`/v1/bot/${enc(id)}?returnStats=true&start=${r.start}&end=${r.end}&dataPoints=${r.points}`);
      const status = document.getElementById("status");
      status.className = "status " + info.connectionStatus;
      status.textContent = info.connectionStatus;
      const seen = document.getElementById("last-seen");
      seen.replaceChildren(info.lastSeen == null ? document.createTextNode("never") : timeEl(info.lastSeen, ago(info.lastSeen)));
      const charts = document.getElementById("charts");
      for (const u of Object.values(state.charts)) u.destroy();
      state.charts = {};
      charts.replaceChildren();
      const names = new Set(info.customGraphs);
      if (info.stats.length) for (const n of Object.keys(info.stats[0].custom)) names.add(n);
      for (const def of chartDefs([...names].sort())) chart(charts, def, info.stats);
      totals(info.customTotals || {});
      state.stats = info.stats;
      if (ninety && r.start >= ninety.start && !ninety.truncated) {
        offlineList(ninety.periods.filter((p) => p.to > r.start && p.from < r.end)
          .map((p) => ({ from: Math.max(p.from, r.start), to: Math.min(p.to, r.end) })), false);
      } else {
        const up = await api(`/v1/bot/${enc(id)}/uptime?start=${r.start}&end=${r.end}`);
        offlineList(up.offline, up.offlineTruncated);
      }
      await shardGrid();
      state.loaded = (state.loaded || 0) + 1;
      document.body.dataset.loaded = String(state.loaded);
    }

    function go(params) {
      history.replaceState(null, "", location.pathname + "?" + new URLSearchParams(params));
      return load(readRange());
    }
    for (const b of document.querySelectorAll("#ranges [data-range]")) b.addEventListener("click", () => go({ range: b.dataset.range }));
    document.getElementById("custom-range").addEventListener("submit", (e) => {
      e.preventDefault();
      const from = new Date(document.getElementById("from").value).getTime();
      const to = new Date(document.getElementById("to").value).getTime();
      if (from < to) go({ from, to });
    });

    ninety = await ninetyDays(id, false);
    const cells = await dayCells(id, ninety, createdAt, false);
    drawBar(document.getElementById("uptime-bar"), cells);
    for (const [key, span] of [["24h", DAY], ["7d", 7 * DAY], ["30d", 30 * DAY]]) {
      const a = ninety.end - span;
      const v = ninety.truncated ? null : 100 * (span - offlineIn(ninety.periods, a, ninety.end)) / span;
      document.getElementById("up-" + key).textContent = pct(v);
    }
    state.ninety = ninety;
    await load(readRange());
    const year = await api(`/v1/bot/${enc(id)}/uptime?start=${ninety.end - 365 * DAY}&end=${ninety.end}`);
    document.getElementById("up-1y").textContent = pct(year.percentage);
    if (ninety.truncated) {
      for (const [key, span] of [["24h", DAY], ["7d", 7 * DAY], ["30d", 30 * DAY]]) {
        const u = await api(`/v1/bot/${enc(id)}/uptime?start=${ninety.end - span}&end=${ninety.end}`);
        document.getElementById("up-" + key).textContent = pct(u.percentage);
      }
    }
    let timer = null;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        for (const u of Object.values(state.charts)) {
          const w = Math.max(240, Math.min(u.root.parentElement.clientWidth, 1060) - 8);
          u.setSize({ width: w, height: 200 });
        }
      }, 150);
    });
  }

  // --- my bots --------------------------------------------------------------------------------
  function spark(values) {
    const pts = values.map((v, i) => [i, v]).filter((p) => p[1] != null);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", "96"); svg.setAttribute("height", "24"); svg.setAttribute("viewBox", "0 0 96 24");
    if (pts.length) {
      const lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
      const n = Math.max(1, values.length - 1);
      let d = "", prev = -2;
      for (const [i, v] of pts) {
        const x = (i / n) * 94 + 1, y = 22 - (hi === lo ? 10 : ((v - lo) / (hi - lo)) * 20);
        d += (i === prev + 1 ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
        prev = i;
      }
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    }
    return svg;
  }
  function lastValue(stats, field) {
    for (let i = stats.length - 1; i >= 0; i--) if (stats[i][field] != null) return stats[i][field];
    return null;
  }
  async function myBots() {
    const table = document.getElementById("bots");
    if (!table) return;
    const rows = [...table.tBodies[0].rows];
    const now = Date.now();
    let pending = rows.slice();
    async function fill(row) {
      const id = row.dataset.bot;
      const f = (name) => row.querySelector(`[data-field="${name}"]`);
      try {
        const [info, up] = await Promise.all([
          api(`/v1/bot/${enc(id)}?returnStats=true&start=${now - DAY}&end=${now}&dataPoints=48`),
          api(`/v1/bot/${enc(id)}/uptime?start=${now - 30 * DAY}&end=${now}`),
        ]);
        const s = f("status");
        s.replaceChildren(el("span", { class: "status " + info.connectionStatus }, info.connectionStatus));
        f("seen").replaceChildren(info.lastSeen == null ? document.createTextNode("never") : timeEl(info.lastSeen, ago(info.lastSeen)));
        const guilds = lastValue(info.stats, "guilds"), users = lastValue(info.stats, "users");
        f("guilds").textContent = fmtCompact(guilds);
        f("users").textContent = fmtCompact(users);
        f("spark").replaceChildren(spark(info.stats.map((b) => b.guilds)));
        f("uptime").textContent = pct(up.percentage);
        Object.assign(row.dataset, {
          status: info.connectionStatus === "connected" ? 1 : 0, seen: info.lastSeen || 0,
          guilds: guilds == null ? -1 : guilds, users: users == null ? -1 : users, uptime: up.percentage,
        });
      } catch (e) {
        f("status").textContent = "unavailable";
      }
    }
    const workers = [];
    for (let w = 0; w < 4; w++) workers.push((async () => { while (pending.length) await fill(pending.shift()); })());
    const filter = document.getElementById("filter");
    filter.addEventListener("input", () => {
      const q = filter.value.trim().toLowerCase();
      for (const r of rows) r.hidden = q !== "" && !r.dataset.name.includes(q) && !r.dataset.bot.toLowerCase().includes(q);
    });
    for (const th of table.tHead.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        const key = th.dataset.sort;
        const desc = th.getAttribute("aria-sort") === "ascending";
        for (const o of table.tHead.querySelectorAll("th")) o.removeAttribute("aria-sort");
        th.setAttribute("aria-sort", desc ? "descending" : "ascending");
        const val = (r) => (key === "name" ? r.dataset.name : Number(r.dataset[key] || -1));
        rows.sort((a, b) => {
          const x = val(a), y = val(b);
          const c = typeof x === "string" ? x.localeCompare(y) : x - y;
          return desc ? -c : c;
        });
        table.tBodies[0].append(...rows);
      });
    }
    await Promise.all(workers);
    document.body.dataset.loaded = "1";
  }

  // --- status page ----------------------------------------------------------------------------
  async function statusPage() {
    for (const box of document.querySelectorAll(".status-bot")) {
      const id = box.dataset.bot;
      const f = (name) => box.querySelector(`[data-field="${name}"]`);
      try {
        const info = await api(`/v1/bot/${enc(id)}`, true);
        f("status").className = "status " + info.connectionStatus;
        f("status").textContent = info.connectionStatus === "connected" ? "online" : "offline";
        const ninety = await ninetyDays(id, true);
        drawBar(f("bar"), await dayCells(id, ninety, Number(box.dataset.created), true));
        const span = ninety.end - Math.max(ninety.start, Number(box.dataset.created));
        f("uptime").textContent = ninety.truncated || span <= 0 ? "—"
          : pct(100 * (span - offlineIn(ninety.periods, ninety.end - span, ninety.end)) / span);
      } catch (e) {
        f("status").textContent = "unavailable";
      }
    }
    document.body.dataset.loaded = "1";
  }

  const run = { bot: botPage, "my-bots": myBots, status: statusPage }[page];
  if (run) run().catch((e) => { document.body.dataset.error = String(e); console.error(e); });
})();
