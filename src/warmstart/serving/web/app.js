// warmstart demo page: plain JS, no build step, no dependencies. Talks to the serving API
// (POST /v1/recommend, POST /v1/search, GET /v1/stats) and the demo routes (/v1/demo/*).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) node.append(kid);
  return node;
};

// ------------------------------------------------------------------ HTTP + error states
class ApiError extends Error {
  constructor(status, message, retryAfter) { super(message); this.status = status; this.retryAfter = retryAfter; }
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  let res;
  const t0 = performance.now();
  try { res = await fetch(path, init); }
  catch (err) { throw new ApiError(0, "The server is unreachable. Is `warmstart demo` still running?"); }
  const rtt = performance.now() - t0;
  let data = null;
  try { data = await res.json(); } catch (err) { data = null; }
  if (!res.ok) {
    const detail = data && (data.detail || data.error || data.message);
    const text = typeof detail === "string" ? detail
      : Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ")
      : JSON.stringify(detail || res.statusText);
    throw new ApiError(res.status, text, res.headers.get("retry-after"));
  }
  const server = Number(res.headers.get("x-latency-ms") || (data && data.latency_ms));
  return { data, rtt, server: Number.isFinite(server) && server > 0 ? server : null };
}

const banner = $("#banner");
function showError(err) {
  let text = err.message;
  if (err.status === 503) text = `Rejected under load (503): ${err.message}` + (err.retryAfter ? ` Retry in ${err.retryAfter} s.` : "");
  else if (err.status === 422 || err.status === 400) text = `The server refused the request (${err.status}): ${err.message}`;
  else if (err.status >= 500) text = `Server error (${err.status}): ${err.message}`;
  banner.textContent = text;
  banner.className = err.status === 503 ? "banner warn" : "banner";
  banner.hidden = false;
}
function clearError() { banner.hidden = true; }

// ------------------------------------------------------------------ tabs (WAI-ARIA pattern)
const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab, focus = true) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  if (tab.id === "tab-dash") dashboard.start(); else dashboard.stop();
  history.replaceState(null, "", "#" + tab.id.slice(4));
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step) { e.preventDefault(); selectTab(tabs[(i + step + tabs.length) % tabs.length]); }
    if (e.key === "Home") { e.preventDefault(); selectTab(tabs[0]); }
    if (e.key === "End") { e.preventDefault(); selectTab(tabs[tabs.length - 1]); }
  });
});

// ------------------------------------------------------------------ catalogue + typeahead
let catalog = [];           // [{id, title, year, genres, n}]
const byId = new Map();
const ratings = new Map();  // movie id -> stars (insertion order = rating order)

function label(m) { return m.year ? `${m.title} (${m.year})` : m.title; }
function genreChips(genres) {
  const span = el("span", { class: "genres" });
  for (const g of genres || []) span.append(el("span", { class: "genre", text: g }));
  return span;
}

function matches(query, limit = 8) {
  const q = query.trim().toLowerCase();
  if (!q) return [];
  // Exact titles first (typing "Toy Story" must offer Toy Story before the more popular
  // Toy Story 2), then prefix/word/substring matches in popularity order.
  const exact = [], out = [];
  for (const m of catalog) {                 // catalogue is sorted by popularity
    const t = m._key;
    if (t === q) exact.push(m);
    else if (out.length < limit && (t.startsWith(q) || t.includes(" " + q) || (q.length > 2 && t.includes(q)))) out.push(m);
  }
  return exact.concat(out).slice(0, limit);
}

const input = $("#movie-q"), list = $("#movie-list");
let active = -1, shown = [];
function renderList() {
  list.replaceChildren();
  if (!input.value.trim()) { closeList(); return; }
  if (!shown.length) {
    list.append(el("li", { class: "none", role: "option", "aria-disabled": "true", text: "No movie with that title in the catalogue." }));
  }
  shown.forEach((m, i) => {
    const li = el("li", { role: "option", id: `opt-${i}`, "aria-selected": String(i === active) },
      label(m), " ", el("span", { class: "meta", text: (m.genres || []).join(", ") }));
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pick(m); });
    list.append(li);
  });
  list.hidden = false;
  input.setAttribute("aria-expanded", "true");
  if (active >= 0) input.setAttribute("aria-activedescendant", `opt-${active}`);
  else input.removeAttribute("aria-activedescendant");
}
function closeList() {
  list.hidden = true; input.setAttribute("aria-expanded", "false");
  input.removeAttribute("aria-activedescendant"); active = -1;
}
input.addEventListener("input", () => { shown = matches(input.value); active = shown.length ? 0 : -1; renderList(); });
input.addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown" && shown.length) { e.preventDefault(); active = (active + 1) % shown.length; renderList(); }
  else if (e.key === "ArrowUp" && shown.length) { e.preventDefault(); active = (active - 1 + shown.length) % shown.length; renderList(); }
  else if (e.key === "Enter") { e.preventDefault(); if (active >= 0 && shown[active]) pick(shown[active]); }
  else if (e.key === "Escape") { closeList(); }
});
// Close after a blur (the delay lets a click on an option land first), unless the input has
// focus again by then: a stale timer must not close the list of a new query.
input.addEventListener("blur", () => setTimeout(() => { if (document.activeElement !== input) closeList(); }, 100));

function pick(movie) {
  input.value = ""; shown = []; closeList();
  if (!ratings.has(movie.id)) ratings.set(movie.id, 0);   // 0 = picked, not yet rated
  renderRated();
  const first = document.querySelector(`#rated li[data-id="${CSS.escape(String(movie.id))}"] .stars button`);
  if (first) first.focus();
}

function renderRated() {
  const ul = $("#rated");
  ul.replaceChildren();
  for (const [id, stars] of ratings) {
    const m = byId.get(id) || { title: String(id), genres: [] };
    const group = el("span", { class: "stars", role: "group", "aria-label": `Rate ${label(m)}` });
    for (let s = 1; s <= 5; s++) {
      group.append(el("button", {
        type: "button", class: s <= stars ? "on" : "", "aria-pressed": String(s === stars),
        "aria-label": `${s} star${s > 1 ? "s" : ""}`, title: `${s} star${s > 1 ? "s" : ""}`,
        onclick: () => { ratings.set(id, s); renderRated(); refresh(); },
      }, "★"));
    }
    const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${label(m)}`,
      onclick: () => { ratings.delete(id); renderRated(); refresh(); } }, "×");
    ul.append(el("li", { "data-id": String(id), "data-stars": String(stars) },
      el("span", { class: "title" }, label(m), " ", genreChips(m.genres)), group, remove));
  }
  $("#rated-empty").hidden = ratings.size > 0;
}

$("#reset").addEventListener("click", () => { ratings.clear(); renderRated(); refresh(); input.focus(); });

// ------------------------------------------------------------------ recommendations
let seq = 0;
async function refresh() {
  const rated = [...ratings].filter(([, s]) => s > 0);
  const body = { interactions: rated.map(([item, rating]) => ({ item, rating })), k: 10 };
  const mine = ++seq;
  try {
    const { data, rtt, server } = await api("/v1/recommend", body);
    if (mine !== seq) return;                       // a newer rating superseded this answer
    clearError();
    const recs = (data.items || data.recommendations || []).map((r) => ({
      id: r.id ?? r.item ?? r.item_id, score: r.score }));
    $("#rec-latency").textContent = server != null
      ? `server ${server.toFixed(1)} ms · round trip ${rtt.toFixed(1)} ms` : `round trip ${rtt.toFixed(1)} ms`;
    $("#rec-state").textContent = rated.length
      ? `Adapted to your ${rated.length} rating${rated.length > 1 ? "s" : ""}` + (data.degraded && data.degraded.length ? ` (degraded under load: ${data.degraded.join(", ")})` : ".")
      : "No ratings yet: this is what the model gives a user it knows nothing about.";
    let why = {};
    if (rated.length && recs.length) {
      const explain = { rated: rated.map(([id]) => id), ratings: rated.map(([, s]) => s), items: recs.map((r) => r.id) };
      try { why = (await api("/v1/demo/explain", explain)).data.why || {}; }
      catch (err) { why = {}; }
      if (mine !== seq) return;
    }
    renderRecs(recs, why);
  } catch (err) {
    if (mine === seq) showError(err);
  }
}

function renderRecs(recs, why) {
  const ol = $("#recs");
  ol.replaceChildren();
  if (!recs.length) { ol.append(el("li", { class: "empty", text: "No recommendations came back." })); return; }
  for (const r of recs) {
    const m = byId.get(r.id) || { title: String(r.id), genres: [] };
    const w = why[String(r.id)];
    ol.append(el("li", { "data-id": String(r.id), "data-genres": (m.genres || []).join("|") },
      el("span", { class: "score", title: "predicted score", text: typeof r.score === "number" ? r.score.toFixed(2) : "" }),
      el("strong", { text: m.title }), m.year ? ` (${m.year}) ` : " ", genreChips(m.genres),
      w ? el("div", { class: "why", text: `because you rated ${label(byId.get(w.id) || { title: String(w.id) })} (similarity ${w.similarity.toFixed(2)})` }) : null));
  }
}

// ------------------------------------------------------------------ search
let canRerank = false;
$("#search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const query = $("#search-q").value.trim();
  if (!query) return;
  const rerank = canRerank && $("#rerank").checked;
  $("#search-meta").textContent = "Searching…";
  try {
    // a person waits for a search longer than the API's default 100 ms deadline
    const { data, rtt, server } = await api("/v1/search", { query, k: 10, rerank, deadline_ms: 5000 });
    clearError();
    const hits = data.hits || data.results || [];
    const ms = server != null ? `server ${server.toFixed(1)} ms · round trip ${rtt.toFixed(1)} ms` : `round trip ${rtt.toFixed(1)} ms`;
    const how = data.reranked ? "reranked by the cross-encoder" : "dense retrieval (zero-shot MiniLM)";
    const deg = data.degraded && data.degraded.length ? ` · degraded: ${data.degraded.join(", ")}` : "";
    $("#search-meta").textContent = `${hits.length} results · ${how} · ${ms}${deg}`;
    const ol = $("#hits");
    ol.replaceChildren();
    if (!hits.length) ol.append(el("li", { class: "empty", text: "No abstract matched." }));
    for (const h of hits) {
      const text = h.text || "";
      ol.append(el("li", { "data-id": String(h.doc_id ?? h.id) },
        el("span", { class: "score", text: Number(h.score).toFixed(3) }),
        el("strong", { text: h.title || "(untitled)" }), el("div", { class: "meta", text: `doc ${h.doc_id ?? h.id}` }),
        el("div", { class: "snippet", text: text.length > 320 ? text.slice(0, 320) + "…" : text })));
    }
  } catch (err) {
    $("#search-meta").textContent = "";
    showError(err);
  }
});

// ------------------------------------------------------------------ dashboard
function lineChart(canvas, series, colors, fixedMax) {
  const ctx = canvas.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const all = series.flat().filter(Number.isFinite);
  const max = fixedMax || Math.max(1e-9, ...all) * 1.15;
  ctx.strokeStyle = "#dde1e6"; ctx.fillStyle = "#5b6470"; ctx.font = "11px system-ui";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  ctx.fillText(max >= 10 ? max.toFixed(0) : max.toFixed(2), 2, 11);
  series.forEach((s, k) => {
    ctx.strokeStyle = colors[k]; ctx.lineWidth = 2; ctx.beginPath();
    const n = 60;
    s.slice(-n).forEach((v, i, arr) => {
      const x = w - (arr.length - 1 - i) * (w / (n - 1)), y = h - 2 - (Number.isFinite(v) ? v : 0) / max * (h - 14);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
}

const dashboard = {
  timer: null, last: null, hist: { rps: [], p50: [], p99: [], shed: [] },
  start() { if (!this.timer) { this.tick(); this.timer = setInterval(() => this.tick(), 1000); } },
  stop() { clearInterval(this.timer); this.timer = null; },
  async tick() {
    let d;
    try { d = (await api("/v1/demo/stats")).data; clearError(); }
    catch (err) { showError(err); return; }
    const fmt = (v, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : "–");
    const h = this.hist;
    h.rps.push(d.rps); h.p50.push(d.p50_ms); h.p99.push(d.p99_ms); h.shed.push(100 * d.shed_rate);
    for (const k in h) if (h[k].length > 120) h[k].shift();
    $("#m-rps").textContent = fmt(d.rps, 0);
    $("#m-p50").textContent = fmt(d.p50_ms);
    $("#m-p99").textContent = fmt(d.p99_ms);
    $("#m-shed").textContent = Number.isFinite(d.shed_rate) ? (100 * d.shed_rate).toFixed(1) + "%" : "–";
    $("#m-inflight").textContent = fmt(d.in_flight, 0);
    lineChart($("#c-rps"), [h.rps], ["#0b63ce"]);
    lineChart($("#c-lat"), [h.p50, h.p99], ["#1a7f37", "#b3261e"]);
    lineChart($("#c-shed"), [h.shed], ["#a35200"], Math.max(5, ...h.shed.filter(Number.isFinite)) * 1.1);
    const tiers = $("#tiers tbody"); tiers.replaceChildren();
    for (const t of d.tiers || []) {
      tiers.append(el("tr", {}, el("td", { text: t.name }), el("td", { text: Number.isFinite(t.hit_rate) ? (100 * t.hit_rate).toFixed(1) + "%" : "–" }),
        el("td", { text: String(t.hits ?? "–") }), el("td", { text: String(t.misses ?? "–") })));
    }
    if (!(d.tiers || []).length) tiers.append(el("tr", {}, el("td", { colspan: "4", class: "empty", text: "No store lookups yet." })));
    const stages = $("#stages tbody"); stages.replaceChildren();
    for (const s of d.stages || []) {
      stages.append(el("tr", {}, el("td", { text: s.pipeline }), el("td", { text: s.name }), el("td", { text: String(s.queue_depth) }),
        el("td", { text: fmt(s.batch_mean) }), el("td", { text: fmt(s.service_p99_ms, 2) })));
    }
  },
};

$("#burst").addEventListener("click", async () => {
  const btn = $("#burst"), status = $("#burst-status");
  btn.disabled = true;
  status.textContent = "Burst running…";
  try {
    const { data } = await api("/v1/demo/burst", window.burstOptions || {});
    status.textContent = `Burst done: ${data.sent} requests in ${data.seconds.toFixed(1)} s, ${data.ok} answered, ` +
      `${data.shed} shed (503), ${data.errors} errors; p99 of answered ${data.p99_ms.toFixed(1)} ms.`;
  } catch (err) {
    status.textContent = "";
    showError(err);
  } finally { btn.disabled = false; }
});

// ------------------------------------------------------------------ start
async function init() {
  try {
    const [{ data: info }, { data: cat }] = await Promise.all([api("/v1/demo/info"), api("/v1/demo/catalog")]);
    catalog = cat.items.slice().sort((a, b) => b.n - a.n);
    for (const m of catalog) { m._key = String(m.title).toLowerCase(); byId.set(m.id, m); }
    canRerank = !!info.rerank.available;
    const box = $("#rerank");
    box.disabled = !canRerank;
    $("#rerank-why").textContent = canRerank ? "Rerank: the cross-encoder rescores the top hits (slower, usually better)."
      : `Rerank is off: ${info.rerank.reason}`;
    $("#footer").textContent = `Serving ${info.served.kind} on ${info.dataset} (${catalog.length} movies), ` +
      `trained by the "${info.preset}" preset; search: ${info.search || "unavailable"}. Commit ${String(info.git_sha || "").slice(0, 8)}.`;
    renderRated();
    refresh();
  } catch (err) { showError(err); }
  const start = tabs.find((t) => "#" + t.id.slice(4) === location.hash) || tabs[0];
  selectTab(start, false);
}
init();
