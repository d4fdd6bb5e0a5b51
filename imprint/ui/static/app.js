// imprint dashboard: plain JS, no build step. Every text from the API is set
// with textContent (never innerHTML), so stored memories cannot inject markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG_NS = "http://www.w3.org/2000/svg";

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  if (res.status === 204) return {};
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(typeof body.detail === "string" ? body.detail : `${res.status} ${res.statusText}`);
  return body;
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const fmt = (n) => Number(n).toLocaleString("en-US");

// Every change is a same-origin POST with a JSON body (the server refuses anything else).
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// ------------------------------------------------------------------ routing

const loaders = {};
function show() {
  const page = (location.hash || "#memories").slice(1);
  const name = loaders[page] ? page : "memories";
  document.querySelectorAll(".page").forEach((p) => (p.hidden = p.id !== `page-${name}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  loaders[name]().catch((err) => console.error(err));
}
window.addEventListener("hashchange", show);

// ------------------------------------------------------------------ memories

const memState = { offset: 0, limit: 50 };

function forgetButton(what, path, body, after) {
  return h("button", { type: "button", class: "danger small", onclick: async () => {
    if (!confirm(`Forget ${what}? It disappears here and, at the next sync, on your other machines.`)) return;
    await post(path, body);
    after();
  } }, "Forget");
}

function memoryCard(m, score) {
  const meta = h("div", { class: "meta" },
    h("span", {}, `project: ${m.project}`), h("span", {}, `type: ${m.type}`),
    h("span", {}, `source: ${m.source || "—"}`), h("span", {}, when(m.timestamp)), h("span", {}, m.id),
    forgetButton("this memory", "/api/memories/forget", { ids: [m.id] }, () => loaders.memories()));
  const card = h("div", { class: "card memory" });
  if (score !== undefined) card.append(h("span", { class: "score" }, score.toFixed(3) + " "));
  card.append(h("div", { class: "content" }, m.content), meta);
  return card;
}

function fillSelect(sel, values) {
  const current = sel.value;
  sel.replaceChildren(h("option", { value: "" }, "all"), ...values.map((v) => h("option", { value: v }, v || "(none)")));
  sel.value = values.includes(current) ? current : "";
}

loaders.memories = async () => {
  memState.limit = Number($("#mem-limit").value) || 50;
  const params = new URLSearchParams({ offset: memState.offset, limit: memState.limit, sort: $("#mem-sort").value });
  for (const key of ["project", "type", "source"]) {
    const sel = $(`#mem-${key}`);
    if (sel.value !== "") params.set(key, sel.value);
  }
  const text = $("#mem-q").value.trim();
  if (text) params.set("q", text);
  const data = await api(`/api/memories?${params}`);
  fillSelect($("#mem-project"), data.projects);
  fillSelect($("#mem-type"), data.types);
  fillSelect($("#mem-source"), data.sources);
  $("#mem-list").replaceChildren(...data.items.map((m) => memoryCard(m)));
  const last = Math.min(data.offset + data.items.length, data.total);
  $("#mem-summary").textContent = `${fmt(data.total)} memories` + (text ? ` containing “${text}”` : "");
  $("#mem-page").textContent = data.total ? `${fmt(data.offset + 1)}–${fmt(last)} of ${fmt(data.total)}` : "none";
  $("#mem-prev").disabled = data.offset === 0;
  $("#mem-next").disabled = last >= data.total;
};

for (const key of ["project", "type", "source", "sort", "limit"]) {
  $(`#mem-${key}`).addEventListener("change", () => { memState.offset = 0; loaders.memories(); });
}
let memTyping = null;
$("#mem-q").addEventListener("input", () => {
  clearTimeout(memTyping);
  memTyping = setTimeout(() => { memState.offset = 0; loaders.memories(); }, 250);
});
$("#mem-filters").addEventListener("submit", (ev) => { ev.preventDefault(); memState.offset = 0; loaders.memories(); });

$("#mem-add-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("#add-status");
  status.className = "status";
  status.textContent = "storing…";
  try {
    const done = await post("/api/memories", { content: $("#add-content").value, project: $("#add-project").value,
      type: $("#add-type").value, tags: $("#add-tags").value });
    status.className = "status done";
    status.textContent = done.ids.length === 1 ? `stored ${done.ids[0]}` : `stored ${fmt(done.ids.length)} chunks`;
    $("#add-content").value = "";
    memState.offset = 0;
    loaders.memories();
  } catch (err) {
    status.className = "status error";
    status.textContent = `error: ${err.message}`;
  }
});
$("#mem-prev").addEventListener("click", () => { memState.offset = Math.max(0, memState.offset - memState.limit); loaders.memories(); });
$("#mem-next").addEventListener("click", () => { memState.offset += memState.limit; loaders.memories(); });

// ------------------------------------------------------------------ search

loaders.search = async () => $("#search-q").focus();
$("#search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams({ q: $("#search-q").value, k: $("#search-k").value || 10 });
  const out = $("#search-results");
  try {
    const data = await api(`/api/search?${params}`);
    out.replaceChildren(...(data.hits.length ? data.hits.map((hit) => memoryCard(hit.memory, hit.score)) : [h("p", { class: "muted" }, "no memories found")]));
  } catch (err) {
    out.replaceChildren(h("p", { class: "status error" }, err.message));
  }
});

// ------------------------------------------------------------------ stats

function barChart(counts) {
  const rowH = 24, labelW = 140, width = 420, barW = width - labelW - 50;
  const max = Math.max(1, ...counts.map((c) => c.count));
  const height = Math.max(rowH, counts.length * rowH);
  const svg = s("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img" });
  counts.forEach((c, i) => {
    const y = i * rowH;
    const label = c.name.length > 20 ? c.name.slice(0, 19) + "…" : c.name;
    svg.append(s("text", { x: labelW - 6, y: y + 16, "text-anchor": "end" }, label));
    svg.append(s("rect", { x: labelW, y: y + 4, width: Math.max(2, (c.count / max) * barW), height: rowH - 8, rx: 3, fill: "#3656d6" }));
    svg.append(s("text", { x: labelW + (c.count / max) * barW + 6, y: y + 16 }, fmt(c.count)));
  });
  if (!counts.length) svg.append(s("text", { x: 6, y: 16 }, "no data"));
  return svg;
}

function donut(parts) {
  const total = parts.reduce((a, p) => a + p.count, 0);
  const svg = s("svg", { width: 320, height: 140, viewBox: "0 0 320 140", role: "img" });
  const r = 50, cx = 70, cy = 70, circ = 2 * Math.PI * r;
  let offset = 0;
  svg.append(s("circle", { cx, cy, r, fill: "none", stroke: "#dde1ea", "stroke-width": 22 }));
  parts.forEach((p, i) => {
    if (total && p.count) {
      const len = (p.count / total) * circ;
      svg.append(s("circle", { cx, cy, r, fill: "none", stroke: p.color, "stroke-width": 22,
        "stroke-dasharray": `${len} ${circ - len}`, "stroke-dashoffset": -offset, transform: `rotate(-90 ${cx} ${cy})` }));
      offset += len;
    }
    svg.append(s("rect", { x: 150, y: 40 + i * 28, width: 14, height: 14, fill: p.color }));
    svg.append(s("text", { x: 172, y: 52 + i * 28 }, `${p.name}: ${fmt(p.count)}`));
  });
  svg.append(s("text", { x: cx, y: cy + 5, "text-anchor": "middle" }, fmt(total)));
  return svg;
}

function columnChart(periods) {
  const width = 420, height = 160, base = 130, left = 10;
  const max = Math.max(1, ...periods.map((p) => p.count));
  const step = (width - left) / Math.max(1, periods.length);
  const svg = s("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img" });
  periods.forEach((p, i) => {
    const x = left + i * step, hgt = (p.count / max) * (base - 20);
    const bar = s("rect", { x: x + 3, y: base - hgt, width: step - 6, height: Math.max(1, hgt), rx: 2, fill: "#3656d6" });
    bar.append(s("title", {}, `${p.label}: ${fmt(p.count)}`));
    svg.append(bar);
    if (p.count) svg.append(s("text", { x: x + step / 2, y: base - hgt - 4, "text-anchor": "middle" }, fmt(p.count)));
    const month = new Date(p.start * 1000).toLocaleString("en-US", { month: "short" });
    svg.append(s("text", { x: x + step / 2, y: base + 16, "text-anchor": "middle" }, month));
  });
  if (!periods.length) svg.append(s("text", { x: 6, y: 16 }, "no data"));
  return svg;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

loaders.stats = async () => {
  const st = await api("/api/stats");
  const tile = (label, value) => h("div", { class: "tile" }, h("b", {}, fmt(value)), label);
  $("#stats-cards").replaceChildren(tile("memories", st.memories), tile("projects", st.by_project.length),
    tile("facts active", st.facts_active), tile("facts ended", st.facts_ended));
  $("#chart-time").replaceChildren(columnChart(st.over_time));
  const about = [["disk", bytes(st.disk_bytes)], ["model", st.model || "—"], ["model fingerprint", st.model_fingerprint || "—"],
    ["last sync", st.last_sync || "never"]];
  $("#stats-about").replaceChildren(...about.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  $("#chart-project").replaceChildren(barChart(st.by_project));
  $("#chart-type").replaceChildren(barChart(st.by_type));
  $("#chart-facts").replaceChildren(donut([{ name: "active", count: st.facts_active, color: "#1e8e5a" }, { name: "ended", count: st.facts_ended, color: "#c0392b" }]));
};

// ------------------------------------------------------------------ facts

function factGraph(facts) {
  const nodes = [...new Set(facts.flatMap((f) => [f.subject, f.object]))];
  const size = 560, cx = size / 2, cy = size / 2, radius = nodes.length > 1 ? size / 2 - 90 : 0;
  const pos = new Map(nodes.map((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, nodes.length) - Math.PI / 2;
    return [n, { x: cx + radius * Math.cos(a), y: cy + radius * Math.sin(a) }];
  }));
  const svg = s("svg", { width: "100%", viewBox: `0 0 ${size} ${size}`, role: "img", style: `max-width:${size}px` });
  const defs = s("defs");
  const marker = s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 22, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" });
  marker.append(s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7385" }));
  defs.append(marker);
  svg.append(defs);
  // Several facts between the same two nodes (an ended one and its successor, say) bend apart,
  // each its own curve and label: ended ones dashed and grey, open ones solid.
  const pairs = new Map();
  for (const f of facts) {
    const key = [f.subject, f.object].sort().join("\u0000");
    pairs.set(key, (pairs.get(key) || 0) + 1);
  }
  const seen = new Map();
  for (const f of facts) {
    const a = pos.get(f.subject), b = pos.get(f.object);
    const key = [f.subject, f.object].sort().join("\u0000");
    const i = seen.get(key) || 0;
    seen.set(key, i + 1);
    const n = pairs.get(key);
    const bend = n > 1 ? (i - (n - 1) / 2) * 40 : 0;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const mx = (a.x + b.x) / 2 - (dy / len) * bend, my = (a.y + b.y) / 2 + (dx / len) * bend;
    const edge = s("path", { d: `M ${a.x} ${a.y} Q ${mx} ${my} ${b.x} ${b.y}`, fill: "none",
      stroke: f.ended ? "#c9cdd6" : "#6b7385", "stroke-width": f.ended ? 1.2 : 1.8,
      "stroke-dasharray": f.ended ? "4 3" : "", "marker-end": "url(#arrow)", class: f.ended ? "edge ended" : "edge open" });
    edge.append(s("title", {}, `${f.subject} ${f.predicate} ${f.object}${f.ended ? " (ended " + when(f.ended) + ")" : ""}`));
    svg.append(edge);
    svg.append(s("text", { x: (a.x + 2 * mx + b.x) / 4, y: (a.y + 2 * my + b.y) / 4 - 4, "text-anchor": "middle",
      fill: f.ended ? "#9aa1b0" : "#3656d6", "font-style": f.ended ? "italic" : "normal" }, f.ended ? `${f.predicate} (ended)` : f.predicate));
  }
  for (const [name, p] of pos) {
    svg.append(s("circle", { cx: p.x, cy: p.y, r: 14, fill: "#fff", stroke: "#3656d6", "stroke-width": 2 }));
    svg.append(s("text", { x: p.x, y: p.y + 30, "text-anchor": "middle" }, name.length > 24 ? name.slice(0, 23) + "…" : name));
  }
  if (!facts.length) svg.append(s("text", { x: 10, y: 20 }, "no facts"));
  return svg;
}

let factsAsked = 0;
loaders.facts = async () => {
  const asked = ++factsAsked;
  const facts = await api(`/api/facts?include_ended=${$("#facts-ended").checked}`);
  if (asked !== factsAsked) return;  // a later request (the box ticked meanwhile) draws instead
  $("#facts-graph").replaceChildren(factGraph(facts));
  $("#facts-table tbody").replaceChildren(...facts.map((f) => h("tr", { class: f.ended ? "ended" : "" },
    h("td", { class: "id", title: f.id }, f.id.slice(0, 8)), h("td", {}, f.subject), h("td", {}, f.predicate), h("td", {}, f.object),
    h("td", {}, when(f.valid_from)), h("td", {}, when(f.ended)), h("td", {}, f.source),
    h("td", {}, forgetButton(`fact ${f.id.slice(0, 8)}`, "/api/facts/forget", { id: f.id }, () => loaders.facts())))));
};
$("#facts-ended").addEventListener("change", () => loaders.facts());
$("#fact-add-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("#fact-status");
  try {
    const f = await post("/api/facts", { subject: $("#fact-subject").value, predicate: $("#fact-predicate").value,
      object: $("#fact-object").value });
    status.className = "status done";
    status.textContent = `added fact ${f.id.slice(0, 8)}`;
    for (const k of ["subject", "predicate", "object"]) $(`#fact-${k}`).value = "";
    loaders.facts();
  } catch (err) {
    status.className = "status error";
    status.textContent = `error: ${err.message}`;
  }
});

// ------------------------------------------------------------------ trust

loaders.trust = async () => {
  const devices = await api("/api/trust");
  $("#trust-empty").hidden = devices.length > 0;
  $("#trust-table tbody").replaceChildren(...devices.map((d) => h("tr", {},
    h("td", {}, h("code", {}, d.fingerprint)), h("td", {}, d.hostname), h("td", {}, when(d.added)),
    h("td", {}, d.public_key ? "pinned" : "none (plaintext)"),
    h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
      if (!confirm(`Forget ${d.hostname} (${d.fingerprint})? It will have to be approved again.`)) return;
      await post("/api/trust/remove", { fingerprint: d.fingerprint });
      loaders.trust();
    } }, "Remove")))));
};

// ------------------------------------------------------------------ sync

function formatStats(ev) {
  const part = (st, name, where) => {
    const x = (st || {})[name] || {};
    let text = "sent" in x ? `${name} ${x.sent}` : `${name}`;
    if ("inserted" in x) {
      text += `${"sent" in x ? " (" : " "}${x.inserted || 0} new, ${(x.skipped || 0) - (x.updated || 0)} already ${where}`;
      if (x.updated) text += `, ${x.updated} updated`;
      if (x.ended) text += `, ${x.ended} ended`;
      if (x.rejected) text += `, ${x.rejected} refused`;
      if ("sent" in x) text += ")";
    }
    return text;
  };
  const lines = ["Sync complete.",
    `  received: ${part(ev.received, "memories", "here")}; ${part(ev.received, "facts", "here")}`,
    `  sent:     ${part(ev.sent, "memories", "there")}; ${part(ev.sent, "facts", "there")}`];
  if (ev.forgotten) lines.push(`  forgotten here, as on the other machine: ${ev.forgotten} (kept in the trash for 30 days)`);
  if (ev.forgets_kept) lines.push(`  kept, though the other machine forgot them: ${ev.forgets_kept}`);
  if (ev.forgets_refused) lines.push(`  tombstones refused (not the other machine's to send, or dated ahead): ${ev.forgets_refused}`);
  if (ev.vectors_reused) lines.push(`  vectors taken from the other machine (same model; each checked here in the background): ${ev.vectors_reused}`);
  return lines.join("\n");
}

const LABELS = { receive: "received", store: "stored", send: "sent", peer_store: "stored there" };

function progressBar(box, ev) {
  const way = ev.direction === "receive" || ev.direction === "store" ? "in" : "out";
  const key = `${way}-${ev.dataset}`;
  let bar = box.querySelector(`[data-key="${key}"]`);
  if (!bar) {
    if (!ev.total) return;
    bar = h("div", { class: "bar", "data-key": key }, h("span", { class: "label" }), h("div", { class: "track" }, h("div", { class: "fill" })));
    box.append(bar);
  }
  bar.dataset[ev.direction] = ev.done;
  const stored = Number(bar.dataset.store || bar.dataset.peer_store || 0);
  const notes = Object.entries(LABELS).filter(([d]) => d in bar.dataset).map(([d, label]) => `${label} ${bar.dataset[d]}`);
  bar.querySelector(".label").textContent = `${way === "in" ? "receiving" : "sending"} ${ev.dataset}: ${notes.join(", ")} of ${ev.total}`;
  bar.querySelector(".fill").style.width = `${ev.total ? Math.min(100, (100 * stored) / ev.total) : 100}%`;
}

function peerLine(e) {
  if (!e.fingerprint) return "the other machine (plaintext: it does not say who it is)";
  return `${e.hostname} (${e.fingerprint}), user ${e.user}, ${e.os}`;
}

// The history gets its line once the session has ended: wait for that (bounded), then reload it.
async function historyWhenDone(id) {
  for (let i = 0; i < 40; i += 1) {
    const info = await api(`/api/sync/sessions/${encodeURIComponent(id)}`).catch(() => ({ finished: true }));
    if (info.finished) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  loaders.sync().catch(() => {});
}

// Start a session with a POST, then watch it: one EventSource per session, closed
// on stats or error so it never reconnects. Closing the page ends the session.
async function runSession(prefix, path, body, onEvent) {
  const status = $(`#${prefix}-status`);
  const start = $(`#${prefix}-start`);
  const stop = $(`#${prefix}-stop`);
  $(`#${prefix}-progress`).replaceChildren();
  $(`#${prefix}-stats`).hidden = true;
  status.className = "status";
  status.textContent = "starting…";
  start.disabled = true;
  let started;
  try {
    started = await post(path, body);
  } catch (err) {
    status.className = "status error";
    status.textContent = `error: ${err.message}`;
    start.disabled = false;
    return null;
  }
  const id = started.session_id;
  const source = new EventSource(`/api/sync/sessions/${encodeURIComponent(id)}/events`);
  stop.hidden = false;
  stop.onclick = () => post("/api/sync/cancel", { session_id: id }).catch(() => {});
  const end = () => { source.close(); start.disabled = false; stop.hidden = true; historyWhenDone(id); };
  source.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    switch (ev.event) {
      case "progress": progressBar($(`#${prefix}-progress`), ev); break;
      case "waiting": case "notice": status.textContent = ev.message; break;
      case "peer_connected":
        status.textContent = `connected to ${ev.hostname ? peerLine(ev) : "the other machine"}, ${ev.mode}` +
          (ev.verification ? `; verification code ${ev.verification}` : "");
        break;
      case "stats":
        status.className = "status done";
        status.textContent = "done";
        $(`#${prefix}-stats`).textContent = formatStats(ev);
        $(`#${prefix}-stats`).hidden = false;
        end();
        break;
      case "error":
        status.className = "status error";
        status.textContent = `error: ${ev.message}`;
        end();
        break;
    }
    onEvent(ev, id);
  };
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED || start.disabled) {
      status.className = "status error";
      status.textContent = "lost the connection to the dashboard";
    }
    end();
  };
  return id;
}

let serveSession = null;
let joinSession = null;
let forgetSession = null;

// The other machine would make this one forget more than --max-forget allows: ask (either role).
function askForget(e, id) {
  forgetSession = id;
  const who = e.hostname ? `${e.hostname} (${e.fingerprint})` : "The other machine";
  $("#forget-text").textContent =
    `${who} has forgotten ${fmt(e.count)} of the ${fmt(e.total)} records this machine holds.`;
  document.querySelectorAll("#forget-confirm button").forEach((b) => (b.disabled = false));
  $("#forget-confirm").hidden = false;
}

document.querySelectorAll("#forget-confirm button").forEach((button) => button.addEventListener("click", async () => {
  document.querySelectorAll("#forget-confirm button").forEach((b) => (b.disabled = true));
  try {
    await post("/api/sync/forget", { session_id: forgetSession, forget: button.dataset.forget === "true" });
    $("#forget-confirm").hidden = true;
  } catch (err) {
    $("#forget-text").textContent = `error: ${err.message}`;
  }
}));

$("#serve-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const relay = $("#serve-relay").value.trim();
  $("#serve-room").hidden = true;
  $("#approval").hidden = true;
  runSession("serve", "/api/sync/serve", relay ? { relay } : {}, (e, id) => {
    serveSession = id;
    switch (e.event) {
      case "room":
        $("#serve-command").textContent = `imprint sync ${e.target} --pin ${e.pin}`;
        $("#serve-target").textContent = e.target;
        $("#serve-pin").textContent = e.pin;
        $("#serve-device").textContent = `${e.hostname} (id: ${e.fingerprint})`;
        $("#serve-room").hidden = false;
        $("#serve-status").textContent = "waiting for the other machine…";
        break;
      case "approval_required":
        for (const k of ["hostname", "user", "os", "fingerprint"]) $(`#approval-${k}`).textContent = e[k];
        $("#approval-verification").textContent = e.verification || "none (plaintext: anyone with the PIN could be asking)";
        $("#approval-compare").hidden = !e.verification;
        $("#approval-warning").textContent = e.warning ? `WARNING: ${e.warning}` : "";
        $("#approval-warning").hidden = !e.warning;
        document.querySelectorAll("#approval button").forEach((b) => (b.disabled = false));
        $("#approval").hidden = false;
        $("#serve-status").textContent = "waiting for your decision";
        break;
      case "auto_accepted":
        $("#serve-status").textContent = `trusted device ${e.hostname} (${e.fingerprint}) accepted`;
        break;
      case "forget_confirm_required":
        askForget(e, id);
        break;
      case "peer_connected":
        $("#approval").hidden = true;
        break;
      case "stats": case "error":
        $("#approval").hidden = true;
        $("#serve-room").hidden = true;  // the PIN is spent: never show it once the session is over
        break;
    }
  });
});

document.querySelectorAll("#approval button").forEach((button) => button.addEventListener("click", async () => {
  document.querySelectorAll("#approval button").forEach((b) => (b.disabled = true));
  try {
    await post("/api/sync/approve", { session_id: serveSession, decision: button.dataset.decision });
    $("#approval").hidden = true;
    $("#serve-status").textContent = button.dataset.decision === "reject" ? "rejected" : "accepted; syncing…";
  } catch (err) {
    $("#serve-status").className = "status error";
    $("#serve-status").textContent = `error: ${err.message}`;
  }
}));

$("#join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("#join-confirm").hidden = true;
  const body = { target: $("#join-target").value.trim(), pin: $("#join-pin").value.trim() };
  runSession("join", "/api/sync/join", body, (e, id) => {
    joinSession = id;
    switch (e.event) {
      case "confirm_required":
        $("#join-peer").textContent = peerLine(e);
        $("#join-verification").textContent = e.verification || "none (plaintext)";
        document.querySelectorAll("#join-confirm button").forEach((b) => (b.disabled = false));
        $("#join-confirm").hidden = false;
        $("#join-status").textContent = "check who this is, then Join";
        break;
      case "forget_confirm_required":
        askForget(e, id);
        break;
      case "stats": case "error":
        $("#join-confirm").hidden = true;
        $("#forget-confirm").hidden = true;
        break;
    }
  });
});

document.querySelectorAll("#join-confirm button").forEach((button) => button.addEventListener("click", async () => {
  document.querySelectorAll("#join-confirm button").forEach((b) => (b.disabled = true));
  try {
    await post("/api/sync/approve", { session_id: joinSession, decision: button.dataset.decision });
    $("#join-confirm").hidden = true;
    $("#join-status").textContent = button.dataset.decision === "accept" ? "joining; syncing…" : "cancelled";
  } catch (err) {
    $("#join-status").className = "status error";
    $("#join-status").textContent = `error: ${err.message}`;
  }
}));

function moved(x) {
  const parts = [];
  if (x && x.memories) parts.push(`${fmt(x.memories)} memories`);
  if (x && x.facts) parts.push(`${fmt(x.facts)} facts`);
  return parts.join(", ") || "—";
}

loaders.sync = async () => {
  const data = await api("/api/sync/history");
  $("#sync-history-empty").hidden = data.syncs.length > 0;
  $("#sync-history tbody").replaceChildren(...data.syncs.map((e) => h("tr", { class: e.error ? "failed" : "" },
    h("td", {}, when(e.at)), h("td", {}, e.role), h("td", {}, e.peer || "—"), h("td", {}, moved(e.received)),
    h("td", {}, moved(e.sent)), h("td", {}, e.forgotten ? fmt(e.forgotten) : "—"),
    h("td", { class: e.error ? "status error" : "status done" }, e.error ? `failed: ${e.error}` : "done"))));
  $("#sync-peers-empty").hidden = data.peers.length > 0;
  $("#sync-peers tbody").replaceChildren(...data.peers.map((p) => h("tr", {},
    h("td", {}, p.name), h("td", {}, p.trusted ? "yes" : "no"), h("td", {}, p.last_sync ? when(p.last_sync) : "—"),
    h("td", {}, fmt(p.syncs)))));
};

// ------------------------------------------------------------------ detail (what a citation opens)

async function openCitation(c) {
  const body = $("#detail-body");
  if (c.kind === "fact") {
    $("#detail-title").textContent = `Fact ${c.id}`;
    body.replaceChildren(h("p", { class: "content" }, `${c.subject} → ${c.predicate} → ${c.object}`),
      h("p", { class: "muted" }, `since ${when(c.valid_from)}${c.ended ? ", ended " + when(c.ended) : ""}`));
  } else {
    $("#detail-title").textContent = `Memory ${c.id}`;
    body.replaceChildren(h("p", { class: "muted" }, "loading…"));
    try {
      const m = await api(`/api/memories/${encodeURIComponent(c.id)}`);
      body.replaceChildren(memoryCard(m));
    } catch (err) {
      body.replaceChildren(h("p", { class: "status error" }, err.message));
    }
  }
  const dialog = $("#detail");
  if (!dialog.open) dialog.showModal();
}

// ------------------------------------------------------------------ chat

const chat = { current: null, controller: null, busy: false };

// The answer's text, with each [n] that names a citation made a link that opens it.
function renderAnswer(el, text, citations) {
  const byN = new Map((citations || []).map((c) => [String(c.n), c]));
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const c = byN.get(m[1]);
    if (!c) continue;
    parts.push(text.slice(last, m.index));
    parts.push(h("a", { href: "#chat", class: "cite", "data-n": c.n, onclick: (ev) => { ev.preventDefault(); openCitation(c); } }, `[${c.n}]`));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  el.replaceChildren(...parts);
}

function citationList(citations) {
  const list = h("ol", { class: "citations" });
  for (const c of citations || []) {
    const label = c.kind === "fact" ? `fact: ${c.subject} → ${c.predicate} → ${c.object}`
      : `${c.project}${c.source ? " · " + c.source : ""} — ${c.content.length > 120 ? c.content.slice(0, 119) + "…" : c.content}`;
    list.append(h("li", { value: c.n }, h("a", { href: "#chat", class: "citation", "data-n": c.n, "data-id": c.id,
      onclick: (ev) => { ev.preventDefault(); openCitation(c); } }, label)));
  }
  return list;
}

function chatMessage(role, content, citations) {
  const text = h("div", { class: "text" });
  const box = h("div", { class: `msg ${role}` }, h("div", { class: "who" }, role === "user" ? "You" : "imprint"), text);
  if (role === "assistant") {
    renderAnswer(text, content, citations);
    if (citations && citations.length) box.append(h("div", { class: "sources" }, h("span", { class: "muted" }, "Found in your memory:"), citationList(citations)));
  } else {
    text.textContent = content;
  }
  return box;
}

async function loadConversations() {
  const data = await api("/api/chat/sessions");
  $("#chat-sessions").replaceChildren(...data.sessions.map((c) => h("li", { class: c.id === chat.current ? "active" : "" },
    h("a", { href: "#chat", "data-id": c.id, onclick: (ev) => { ev.preventDefault(); if (!chat.busy) openConversation(c.id); } }, c.title),
    h("span", { class: "muted" }, ` ${fmt(c.messages)}`))));
  return data.sessions;
}

async function openConversation(id) {
  chat.current = id;
  const log = $("#chat-log");
  $("#chat-rename").hidden = $("#chat-delete").hidden = !id;
  if (!id) {
    $("#chat-title").textContent = "Chat";
    log.replaceChildren(h("p", { class: "muted" }, "Ask about anything you or your agents stored: the answer cites the memories it comes from."));
    await loadConversations();
    return;
  }
  const conv = await api(`/api/chat/sessions/${encodeURIComponent(id)}`);
  $("#chat-title").textContent = conv.title;
  log.replaceChildren(...conv.messages.map((m) => chatMessage(m.role, m.content, m.citations)));
  log.scrollTop = log.scrollHeight;
  await loadConversations();
}

loaders.chat = async () => {
  const st = await api("/api/chat/status");
  $("#chat-model").textContent = st.available
    ? `Model: ${st.model}${st.local ? " — on this machine, nothing leaves it" : " — the question and the memories found are sent there"}${st.local && !st.loaded ? " (loads on the first question)" : ""}`
    : st.problem;
  const sessions = await loadConversations();
  if (chat.current === null && sessions.length) await openConversation(sessions[0].id);
  else await openConversation(chat.current);
  $("#chat-q").focus();
};

// Read a POST's SSE body: one JSON event per `data:` line.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) if (line.startsWith("data: ")) yield JSON.parse(line.slice(6));
    }
  }
}

function chatBusy(busy) {
  chat.busy = busy;
  $("#chat-send").disabled = busy;
  $("#chat-stop").hidden = !busy;
  $("#chat-new").disabled = busy;
}

async function ask(question) {
  if (!chat.current) {
    const conv = await post("/api/chat/sessions", {});
    chat.current = conv.id;
    $("#chat-log").replaceChildren();
  }
  const log = $("#chat-log");
  log.append(chatMessage("user", question));
  const answer = chatMessage("assistant", "", []);
  answer.classList.add("pending");
  log.append(answer);
  const textEl = answer.querySelector(".text");
  const status = $("#chat-status");
  let text = "", citations = [];
  chatBusy(true);
  status.textContent = "searching your memory…";
  chat.controller = new AbortController();
  try {
    const res = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ session_id: chat.current, message: question }), signal: chat.controller.signal });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(typeof body.detail === "string" ? body.detail : `${res.status} ${res.statusText}`);
    }
    for await (const ev of sseEvents(res)) {
      switch (ev.type) {
        case "citations":
          citations = ev.items;
          if (citations.length) answer.append(h("div", { class: "sources" }, h("span", { class: "muted" }, "Found in your memory:"), citationList(citations)));
          status.textContent = citations.length ? "answering…" : "nothing in the memory matches; answering…";
          break;
        case "status": status.textContent = ev.text; break;
        case "token":
          text += ev.text;
          renderAnswer(textEl, text, citations);
          log.scrollTop = log.scrollHeight;
          break;
        case "tool_call": status.textContent = `looking further: ${ev.name}(${Object.values(ev.args || {}).join(", ")})`; break;
        case "error": answer.append(h("p", { class: "status error" }, ev.error)); break;
        case "done":
          status.textContent = ev.stopped ? "stopped" : "";
          if (ev.stopped) answer.append(h("p", { class: "muted" }, "(stopped)"));
          break;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") answer.append(h("p", { class: "status error" }, err.message));
    else status.textContent = "stopped";
  } finally {
    answer.classList.remove("pending");
    chat.controller = null;
    chatBusy(false);
    loadConversations().then(() => {
      const active = document.querySelector("#chat-sessions li.active a");
      if (active) $("#chat-title").textContent = active.textContent;
    }).catch(() => {});
  }
}

$("#chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const question = $("#chat-q").value.trim();
  if (!question || chat.busy) return;
  $("#chat-q").value = "";
  ask(question);
});
$("#chat-q").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("#chat-form").requestSubmit(); }
});
$("#chat-stop").addEventListener("click", async () => {
  const id = chat.current;
  try { await post("/api/chat/stop", { session_id: id }); } catch (err) { /* already over */ }
  // If the answer does not end promptly, drop the stream (the server stops it when the page goes).
  setTimeout(() => { if (chat.controller) chat.controller.abort(); }, 3000);
});
$("#chat-new").addEventListener("click", () => { chat.current = ""; openConversation(""); $("#chat-q").focus(); });
$("#chat-rename").addEventListener("click", async () => {
  const title = prompt("Name this conversation", $("#chat-title").textContent);
  if (!title || !title.trim()) return;
  await post(`/api/chat/sessions/${encodeURIComponent(chat.current)}/rename`, { title });
  await openConversation(chat.current);
});
$("#chat-delete").addEventListener("click", async () => {
  if (!confirm("Delete this conversation? The memories it cited stay.")) return;
  await post(`/api/chat/sessions/${encodeURIComponent(chat.current)}/delete`, {});
  chat.current = "";
  await openConversation("");
});

// ------------------------------------------------------------------ start

api("/api/status").then((st) => {
  $("#device").textContent = `${st.hostname} · ${st.device_id} · ${st.workspace}`;
}).catch(() => {});
show();
