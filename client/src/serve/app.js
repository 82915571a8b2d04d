// The tally dashboard: one page, no dependencies. Counts arrive on the event
// stream /api/events (one `tick` a second, plus `top` and `status` when they
// change); the JSON API is used for the first paint and for lookups. All data is
// inserted with textContent, never as HTML: message texts are user input.
"use strict";

const MAX_CLIENTS = 16;   // as /api/events accepts
const MAX_MESSAGES = 32;
const HISTORY = 120;      // chart samples (seconds) kept

const $ = (id) => document.getElementById(id);
const watched = new Map(); // key "client:<id>" | "message:<hash>" -> entry
const history = [];        // [{t, rate}] bounded by HISTORY
let events = null;
let ticks = 0;
// With serve.token_file, the page is opened as /?token=…; every request carries it.
const TOKEN = new URLSearchParams(location.search).get("token");

function withToken(path) {
  if (!TOKEN) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}`;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function getJSON(path) {
  const response = await fetch(withToken(path), { cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  }
  return body;
}

function showError(where, message) {
  const node = $(where);
  node.textContent = message || "";
  node.hidden = !message;
}

// --- watched clients and messages -------------------------------------------

function renderWatched() {
  const body = $("watched").querySelector("tbody");
  body.replaceChildren();
  for (const [key, w] of watched) {
    const remove = el("button", { class: "remove", title: "stop watching", type: "button" }, "×");
    remove.addEventListener("click", () => { watched.delete(key); renderWatched(); openEvents(); });
    const attrs = { "data-kind": w.kind, "data-key": w.id };
    const detail = w.kind === "client"
      ? `last_sn ${w.view.last_sn} · stored ${w.view.stored_sn} · flushed ${w.view.flushed_sn} · owner ${w.view.owner || "-"}`
      : w.id;
    const row = el("tr", attrs,
      el("td", {}, w.kind),
      el("td", { class: "what" }, w.label),
      el("td", { class: "num count" }, w.count),
      el("td", { class: "detail" }, detail),
      el("td", {}, remove));
    if (w.flash) { row.classList.add("flash"); w.flash = false; }
    body.append(row);
  }
}

function countOf(kind) {
  let n = 0;
  for (const w of watched.values()) if (w.kind === kind) n++;
  return n;
}

async function watchClient(id) {
  id = id.trim();
  if (!id) return;
  try {
    const view = await getJSON(`/api/clients/${encodeURIComponent(id)}`);
    const key = `client:${view.client}`;
    if (!watched.has(key) && countOf("client") >= MAX_CLIENTS) throw new Error(`at most ${MAX_CLIENTS} clients`);
    watched.set(key, { kind: "client", id: view.client, label: view.client, count: view.count, view });
    showError("lookup-error", "");
    renderWatched();
    openEvents();
  } catch (e) {
    showError("lookup-error", e.message);
  }
}

async function watchMessage(text) {
  if (!text) return;
  try {
    const view = await getJSON(`/api/messages?text=${encodeURIComponent(text)}`);
    const key = `message:${view.hash}`;
    if (!watched.has(key) && countOf("message") >= MAX_MESSAGES) throw new Error(`at most ${MAX_MESSAGES} messages`);
    watched.set(key, { kind: "message", id: view.hash, label: text, count: view.count });
    showError("lookup-error", "");
    renderWatched();
    openEvents();
  } catch (e) {
    showError("lookup-error", e.message);
  }
}

// --- top messages and health ------------------------------------------------

function renderTop(list) {
  const ol = $("top");
  ol.replaceChildren();
  if (!list.length) ol.append(el("li", { class: "hint" }, "nothing counted yet"));
  for (const m of list) {
    ol.append(el("li", { "data-hash": m.hash },
      el("span", { class: "count" }, m.count),
      el("span", { class: "text" }, m.text == null ? m.hash : m.text)));
  }
}

function renderStatus(s) {
  const producers = $("producers").querySelector("tbody");
  producers.replaceChildren();
  for (const p of s.producers) {
    producers.append(el("tr", { "data-instance": p.instance },
      el("td", {}, p.instance),
      el("td", { class: p.alive ? "alive" : "dead" }, p.alive ? "alive" : "DEAD"),
      el("td", { class: "num" }, `${(p.heartbeat_age_ms / 1000).toFixed(1)} s ago`),
      el("td", { class: "num" }, p.owned)));
  }
  if (!s.producers.length) producers.append(el("tr", {}, el("td", { colSpan: 4, class: "hint" }, "no producer registered")));
  const groups = $("groups").querySelector("tbody");
  groups.replaceChildren();
  for (const g of s.groups) {
    groups.append(el("tr", {}, el("td", {}, g.group), el("td", {}, g.topic), el("td", { class: "num" }, g.lag)));
  }
  const dl = $("pipeline");
  dl.replaceChildren();
  const facts = [
    ["clients known", s.clients],
    ["clients owned", s.owned_clients],
    ["clients with a backlog", s.clients_with_backlog],
    ["stash backlog", s.stash_backlog],
    ["largest flush lag", s.max_flush_lag ? `${s.max_flush_lag[1]} (${s.max_flush_lag[0]})` : 0],
    ["in Kafka, not counted", s.uncounted],
    ["stalled clients", s.stalled_clients.length],
    ["dead letters", s.dlq_records],
  ];
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  // StatusView carries counts, not every client id: list the clients it names
  // (stalled ones and the one furthest behind in flushing).
  const ul = $("clients");
  ul.replaceChildren();
  const named = new Set(s.stalled_clients);
  if (s.max_flush_lag) named.add(s.max_flush_lag[0]);
  for (const id of named) {
    const li = el("li", {}, id);
    li.addEventListener("click", () => watchClient(id));
    ul.append(li);
  }
  if (!named.size) ul.append(el("li", { class: "hint" }, "none lagging or stalled; look one up above"));
}

// --- throughput chart -------------------------------------------------------

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const left = 48, bottom = height - 18, top = 8, right = width - 8;
  const scale = axisScale(Math.max(0, ...history.map((h) => h.rate || 0)));
  g.strokeStyle = "#d9dde6";
  g.fillStyle = "#6b7385";
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - ((bottom - top) * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText(formatRate((scale * i) / 4), 4, y + 4);
  }
  g.fillText(`last ${HISTORY} s`, right - 60, height - 4);
  if (history.length < 2) return;
  const step = (right - left) / (HISTORY - 1);
  const x0 = right - step * (history.length - 1);
  g.strokeStyle = "#2f6fde";
  g.lineWidth = 2;
  g.beginPath();
  history.forEach((h, i) => {
    const y = bottom - ((bottom - top) * (h.rate || 0)) / scale;
    if (i === 0) g.moveTo(x0, y); else g.lineTo(x0 + step * i, y);
  });
  g.stroke();
}

// The chart's top value for rates up to `max`: four equal steps of 1, 2 or 5 × 10^k,
// at least 1 each, so the five labels are whole numbers and all different (a top
// of 1 would label 0, 0.25, 0.5, … and round them to 0, 0, 1, 1, 1).
function axisScale(max) {
  return 4 * niceCeil(Math.max(1, max / 4));
}

function niceCeil(x) {
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function formatRate(x) {
  return x >= 1000 ? `${(x / 1000).toFixed(x >= 10000 ? 0 : 1)}k` : `${Math.round(x)}`;
}

// --- the event stream -------------------------------------------------------

function setConnected(on) {
  const badge = $("conn");
  badge.className = `badge ${on ? "on" : "off"}`;
  badge.dataset.state = on ? "live" : "disconnected";
  badge.textContent = on ? "live" : "reconnecting…";
}

function onTick(data) {
  ticks++;
  document.body.dataset.ticks = String(ticks);
  if (data.per_second != null) $("rate").textContent = formatRate(data.per_second);
  if (data.counted_total != null) $("counted").textContent = data.counted_total;
  history.push({ t: data.t_ms, rate: data.per_second });
  while (history.length > HISTORY) history.shift();
  drawChart();
  let changed = false;
  for (const view of data.clients || []) {
    const w = watched.get(`client:${view.client}`);
    if (w) { w.flash = w.count !== view.count; w.count = view.count; w.view = view; changed = true; }
  }
  for (const m of data.messages || []) {
    const w = watched.get(`message:${m.hash}`);
    if (w) { w.flash = w.count !== m.count; w.count = m.count; changed = true; }
  }
  if (changed) renderWatched();
  // Errors arrive apart from the values (`errors`, by what failed); a failed
  // sampler leaves its value as it was and is reported here, never in its place.
  const errors = Object.entries(data.errors || {}).map(([k, v]) => `${k} unavailable (${v})`);
  showError("errors", errors.join(" · "));
}

function openEvents() {
  if (events) events.close();
  const params = new URLSearchParams();
  for (const w of watched.values()) params.append(w.kind, w.id);
  if (TOKEN) params.append("token", TOKEN);
  events = new EventSource(`/api/events?${params}`);
  events.onopen = () => setConnected(true);
  const mine = events;
  events.onerror = () => {
    setConnected(false);
    // EventSource retries by itself, except after a non-200 answer (e.g. 503 when
    // the server has too many streams): then try again later.
    if (mine.readyState === EventSource.CLOSED) {
      setTimeout(() => { if (events === mine) openEvents(); }, 5000);
    }
  };
  const handle = (fn) => (e) => {
    try { fn(JSON.parse(e.data)); } catch (err) { showError("errors", `bad event: ${err.message}`); }
  };
  events.addEventListener("tick", handle(onTick));
  events.addEventListener("top", handle(renderTop));
  events.addEventListener("status", handle(renderStatus));
}

// --- start ------------------------------------------------------------------

$("client-form").addEventListener("submit", (e) => { e.preventDefault(); watchClient($("client-input").value); });
$("message-form").addEventListener("submit", (e) => { e.preventDefault(); watchMessage($("message-input").value); });
window.addEventListener("resize", drawChart);

(async () => {
  drawChart();
  openEvents();
  await Promise.all([
    getJSON("/api/top?n=10").then(renderTop).catch((e) => showError("errors", `top: ${e.message}`)),
    getJSON("/api/status").then(renderStatus).catch((e) => showError("errors", `status: ${e.message}`)),
  ]);
  document.body.dataset.loaded = "true";
})();
