/* Fleet console pages: tables and charts drawn from the JSON API, kept live by /api/live.
   Everything a device sent is inserted as text (textContent), never as HTML. */
"use strict";
const Console = (() => {
  const fmtTime = (ts) => ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-";
  const fmtNum = (v, digits) => (v === null || v === undefined) ? "-" : Number(v).toFixed(digits);
  const ago = (ts) => {
    if (!ts) return "-";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : fmtTime(ts);
  };
  const B64 = /^[A-Za-z0-9+/=]+$/;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function fill(tableId, rows, render) {
    const body = document.querySelector(`#${tableId} tbody`);
    const fresh = document.createElement("tbody");
    rows.forEach((row) => { const tr = document.createElement("tr"); render(tr, row); fresh.appendChild(tr); });
    if (!rows.length) { const tr = document.createElement("tr"); cell(tr, "none yet", "muted"); fresh.appendChild(tr); }
    body.replaceWith(fresh);
  }
  // A device's sources (cameras) being reopened: names as text, a red badge when any
  function downCell(tr, names) {
    const down = Array.isArray(names) ? names.filter((n) => typeof n === "string") : [];
    tr.dataset.down = String(down.length);
    if (!down.length) return cell(tr, "-", "muted");
    const b = document.createElement("span"); b.className = "badge-down";
    b.textContent = `DOWN: ${down.join(", ")}`;
    return cell(tr, b, "sources-down");
  }
  function link(text, href) { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

  function renderAlerts(alerts) {
    fill("alerts", alerts, (tr, a) => {
      const open = a.resolved_at === null;
      tr.dataset.device = a.device; tr.dataset.rule = a.rule; tr.dataset.state = open ? "open" : "resolved";
      tr.className = open ? "alert-open" : "alert-resolved";
      cell(tr, a.device); cell(tr, a.rule); cell(tr, open ? "OPEN" : "resolved");
      cell(tr, fmtTime(a.opened_at)); cell(tr, fmtTime(a.resolved_at)); cell(tr, a.message);
    });
  }
  function renderEvents(events) {
    fill("events", events, (tr, e) => {
      const p = e.payload || {};
      cell(tr, fmtTime(e.ts)); cell(tr, e.device);
      const track = p.tracker_id ?? p.track_id;
      const what = typeof p === "object" ? [p.type, p.zone || p.line, p.direction, p.label, track !== undefined ? `track ${track}` : null].filter(Boolean).join(" · ") : String(p);
      cell(tr, what || JSON.stringify(p).slice(0, 120));
      if (typeof p.snapshot === "string" && p.snapshot.length < 2e6 && B64.test(p.snapshot)) {
        const img = document.createElement("img"); img.className = "snapshot"; img.alt = "snapshot";
        img.src = `data:image/jpeg;base64,${p.snapshot}`; cell(tr, img);
      } else cell(tr, "-", "muted");
    });
  }
  function live(onFleet) {
    const status = document.getElementById("live");
    const source = new EventSource("/api/live");
    source.addEventListener("fleet", (ev) => {
      const snap = JSON.parse(ev.data);
      if (snap.error) { status.textContent = `database: ${snap.error}`; return; }
      status.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      status.dataset.updates = String(Number(status.dataset.updates || 0) + 1);
      onFleet(snap);
    });
    source.onerror = () => { status.textContent = "reconnecting…"; };
  }

  function fleetPage() {
    live((snap) => {
      fill("fleet", snap.devices, (tr, d) => {
        tr.dataset.device = d.device; tr.dataset.state = d.state;
        cell(tr, link(d.device, `/devices/${encodeURIComponent(d.device)}`));
        cell(tr, d.state, d.state === "online" ? "online" : d.state === "offline" ? "offline" : "unknown");
        cell(tr, ago(d.last_seen)); cell(tr, d.model || "-"); cell(tr, d.version || "-");
        cell(tr, fmtNum(d.fps, 1), "num"); cell(tr, fmtNum(d.latency_p95_ms, 1), "num");
        cell(tr, fmtNum(d.drift_psi, 2), "num"); cell(tr, fmtNum(d.outbox_depth, 0), "num");
        cell(tr, fmtNum(d.dropped, 0), "num");
        cell(tr, String(d.open_alerts), d.open_alerts ? "num alert-open" : "num");
        downCell(tr, d.sources_down);
      });
      renderAlerts(snap.alerts); renderEvents(snap.events);
      fill("rollouts", snap.rollouts, (tr, r) => {
        const d = r.detail || {};
        cell(tr, r.rollout); cell(tr, r.device); cell(tr, r.state);
        cell(tr, typeof d.progress === "number" ? `${(d.progress * 100).toFixed(0)} %` : "-", "num");
        cell(tr, typeof d.reason === "string" && d.reason ? d.reason : "-"); cell(tr, fmtTime(r.ts));
      });
    });
  }

  const SERIES = [
    ["fps", "Throughput (fps)", ["fps", "capacity_fps"]],
    ["latency", "p95 latency (ms)", ["latency_p95_ms", "latency_baseline_ms"]],
    ["drift", "Input drift (PSI)", ["drift_psi", "drift.brightness_psi", "drift.confidence_psi"]],
    ["outbox", "Outbox depth (messages)", ["outbox_depth"]],
  ];
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

  function devicePage() {
    const device = decodeURIComponent(location.pathname.split("/").pop());
    const api = `/api/devices/${encodeURIComponent(device)}`;
    document.getElementById("title").textContent = device;
    document.title = `${device} · Fleet console`;
    const points = [];
    const charts = {};
    let lastTs = 0;

    function draw() {
      const box = document.getElementById("charts");
      for (const [id, title, keys] of SERIES) {
        const used = keys.filter((k) => points.some((p) => typeof p[k] === "number"));
        if (!used.length) continue;
        const data = [points.map((p) => p.ts), ...used.map((k) => points.map((p) => (typeof p[k] === "number" ? p[k] : null)))];
        let c = charts[id];
        if (!c || c.keys.join() !== used.join()) {
          if (c) { c.plot.destroy(); c.el.remove(); }
          const el = document.createElement("div"); el.className = "chart"; el.id = `chart-${id}`;
          const h = document.createElement("h3"); h.textContent = title; el.appendChild(h);
          box.appendChild(el);
          const opts = { width: 480, height: 200, series: [{}, ...used.map((k, i) => ({ label: k, stroke: COLOURS[i % 4], spanGaps: true }))] };
          c = charts[id] = { el, keys: used, plot: new uPlot(opts, data, el) };
        } else c.plot.setData(data);
        c.el.dataset.points = String(points.length);
      }
    }
    async function more() {
      const r = await fetch(`${api}/telemetry?since=${lastTs}&limit=2000`);
      if (!r.ok) return;
      for (const p of await r.json()) {
        if (p.ts > lastTs || !points.length) { points.push(p); lastTs = Math.max(lastTs, p.ts); }
      }
      if (points.length > 5000) points.splice(0, points.length - 5000);
      draw();
    }
    async function acks() {
      const r = await fetch(`${api}/acks`);
      if (!r.ok) return;
      fill("acks", await r.json(), (tr, a) => {
        tr.dataset.name = a.name || ""; tr.dataset.ok = String(a.ok);
        cell(tr, fmtTime(a.received)); cell(tr, a.name || "-"); cell(tr, a.ok ? "yes" : "no", a.ok ? "online" : "offline");
        cell(tr, a.ok ? JSON.stringify(a.result).slice(0, 200) : a.error);
      });
    }
    function summary(d, error) {
      const rows = error ? [["State", `unknown: ${error}`]] : d ? [["State", d.state], ["Last seen", ago(d.last_seen)], ["Model", `${d.model || "-"} ${d.version || ""}`],
        ["FPS", fmtNum(d.fps, 1)], ["p95 latency (ms)", fmtNum(d.latency_p95_ms, 1)],
        ["Baseline p95 (ms)", fmtNum(d.latency_baseline_ms, 1)], ["Drift PSI", fmtNum(d.drift_psi, 2)],
        ["Outbox", fmtNum(d.outbox_depth, 0)], ["Dropped frames", fmtNum(d.dropped, 0)],
        ["Cameras down", d.sources_down]] : [["State", "never reported"]];
      fill("summary", rows, (tr, [k, v]) => {
        tr.dataset.key = k; cell(tr, k);
        if (k === "Cameras down") downCell(tr, v); else cell(tr, v);
      });
    }
    async function command(name) {
      const out = document.getElementById("cmd-result");
      const token = document.getElementById("token").value;
      const r = await fetch(`${api}/commands`, { method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` }, body: JSON.stringify({ name, args: {} }) });
      const body = await r.json();
      out.textContent = r.ok ? `sent ${name} (${body.id.slice(0, 8)}); the ack appears below` : body.error;
    }
    // 404: the device never reported; anything else (503: the database is away) says why
    fetch(api).then(async (r) => {
      if (r.ok) return r.json();
      if (r.status === 404) return null;
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${r.status}`);
    }).then((d) => { summary(d); return d; }, (e) => { summary(null, e.message); return null; }).then((d) => {
      for (const name of (d && d.commands) || ["ping", "stats"]) {
        const b = document.createElement("button"); b.textContent = name; b.onclick = () => command(name);
        document.getElementById("buttons").appendChild(b);
      }
    });
    more(); acks();
    live((snap) => {
      summary(snap.devices.find((d) => d.device === device));
      renderAlerts(snap.alerts.filter((a) => a.device === device));
      renderEvents(snap.events.filter((e) => e.device === device));
      more(); acks();
    });
  }
  return { fleetPage, devicePage };
})();
