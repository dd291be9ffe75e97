// seqrec demo page: plain JS against the public API, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { bundles: [], itemsOp: null, spec: null, previous: {} };

async function api(path, opts = {}) {
  const res = await fetch(path, opts);
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  return { status: res.status, body, headers: res.headers };
}

function say(text, bad = false) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "message bad" : "message";
}

function user() { return $("user").value.trim(); }
function apiKey() { return $("apikey").value; }
function writeHeaders() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h["X-API-Key"] = apiKey();
  return h;
}

function rememberUser(u) {
  const users = JSON.parse(localStorage.getItem("seqrec-users") || "[]").filter((x) => x !== u);
  users.unshift(u);
  localStorage.setItem("seqrec-users", JSON.stringify(users.slice(0, 20)));
  renderUserList();
}

function renderUserList() {
  const users = JSON.parse(localStorage.getItem("seqrec-users") || "[]");
  for (const u of ["demo-user", "alice", "bob"]) if (!users.includes(u)) users.push(u);
  const dl = $("users");
  dl.replaceChildren(...users.map((u) => Object.assign(document.createElement("option"), { value: u })));
}

async function loadStatus() {
  const r = await api("/readyz");
  const s = $("status");
  if (!r.body || !r.body.bundles) { s.textContent = "API unreachable"; s.className = "status bad"; return; }
  state.bundles = r.body.bundles;
  const models = state.bundles.map((b) => `${b.name} (${b.model})`).join(", ");
  s.textContent = `store ${r.body.store}: ${r.body.store_ok ? "ok" : "DOWN"} · models: ${models}`;
  s.className = r.body.store_ok ? "status" : "status bad";
}

async function detectItemsEndpoint() {
  // Show the "add item" form only when this server really has POST /items.
  const r = await api("/openapi.json");
  state.spec = r.body;
  const op = r.body && r.body.paths && r.body.paths["/items"] && r.body.paths["/items"].post;
  state.itemsOp = op || null;
  $("add-item").hidden = !op;
}

function itemLine(li, item, title, score) {
  const name = document.createElement("span");
  name.textContent = title || item;
  li.append(name);
  if (title) {
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = ` #${item}`;
    li.append(id);
  }
  if (score !== undefined) {
    const sc = document.createElement("span");
    sc.className = "score";
    sc.textContent = score.toFixed(3);
    li.prepend(sc);
  }
}

async function titlesFor(ids) {
  if (!ids.length) return {};
  const q = ids.map((i) => "id=" + encodeURIComponent(i)).join("&");
  const r = await api("/ui/titles?" + q);
  const out = {};
  for (const x of r.body || []) out[x.item_id] = x.title;
  return out;
}

async function showHistory(u) {
  const r = await api(`/ui/history/${encodeURIComponent(u)}?n=50`);
  const ol = $("history");
  ol.replaceChildren();
  if (r.status !== 200) {
    $("history-count").textContent = r.status === 503 ? "(store unavailable)" : `(error ${r.status})`;
    return;
  }
  $("history-count").textContent = `(${r.body.items.length} shown, oldest first)`;
  for (const it of r.body.items) {
    const li = document.createElement("li");
    itemLine(li, it.item_id, it.title);
    ol.append(li);
  }
}

async function showRecommendations(u) {
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10));
  const results = await Promise.all(
    state.bundles.map((b) =>
      api(`/recommend/${encodeURIComponent(u)}?k=${k}&model=${encodeURIComponent(b.name)}&explain=true`).then((r) => [b, r])
    )
  );
  const allIds = results.flatMap(([, r]) =>
    r.body && r.body.items ? r.body.items.flatMap((x) => [x.item_id, ...(x.because || []).map((e) => e.item_id)]) : []);
  const titles = await titlesFor([...new Set(allIds)].slice(0, 200));
  const box = $("models");
  box.replaceChildren();
  for (const [b, r] of results) {
    const col = document.createElement("div");
    col.className = "model";
    col.dataset.model = b.name;
    const h = document.createElement("h3");
    h.textContent = b.model;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${b.name} · v${b.version} · ${b.num_items} items`;
    col.append(h, meta);
    if (r.status !== 200) {
      const e = document.createElement("div");
      e.className = "message bad";
      e.textContent = `error ${r.status}: ${(r.body && r.body.detail) || ""}`;
      col.append(e);
      box.append(col);
      continue;
    }
    const badge = document.createElement("span");
    badge.className = "badge " + r.body.source;
    badge.textContent = r.body.source + (r.body.fallback ? ` (${r.body.fallback})` : "") +
      ` · history ${r.body.history_length}`;
    col.append(badge);
    const ol = document.createElement("ol");
    const before = new Set(state.previous[b.name + "\u0000" + u] || []);
    for (const it of r.body.items) {
      const li = document.createElement("li");
      if (before.size && !before.has(it.item_id)) li.className = "changed";
      itemLine(li, it.item_id, titles[it.item_id], it.score);
      if (it.because && it.because.length) {
        // The history events whose removal would lower this score most (GET /recommend?explain=true).
        const why = document.createElement("div");
        why.className = "because";
        why.textContent = "because you interacted with " +
          it.because.map((e) => `${titles[e.item_id] || e.item_id} (${Math.round(100 * e.weight)}%)`).join(", ");
        li.append(why);
      }
      ol.append(li);
    }
    state.previous[b.name + "\u0000" + u] = r.body.items.map((x) => x.item_id);
    col.append(ol);
    box.append(col);
  }
}

async function refresh() {
  const u = user();
  if (!u) { say("type a user id", true); return; }
  rememberUser(u);
  await loadStatus();
  await Promise.all([showHistory(u), showRecommendations(u)]);
}

async function addEvent(itemId) {
  const u = user();
  const r = await api("/events", {
    method: "POST",
    headers: writeHeaders(),
    body: JSON.stringify({ events: [{ user_id: u, item_id: itemId }] }),
  });
  if (r.status === 200) say(`event stored: ${u} → ${itemId}`);
  else say(`event refused (${r.status}): ${(r.body && r.body.detail) || ""}`, true);
  await refresh();
}

let searchTimer = null;
let searchSeq = 0;
async function search() {
  // Responses can arrive out of order under load: only the newest query may render.
  const q = $("search").value;
  const seq = ++searchSeq;
  const r = await api(`/ui/items?limit=30&q=${encodeURIComponent(q)}`);
  if (seq !== searchSeq) return;
  const ul = $("search-results");
  ul.replaceChildren();
  ul.dataset.q = q;  // which query the list shows (tests and tools wait on it)
  for (const it of r.body || []) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    itemLine(label, it.item_id, it.title);
    const add = document.createElement("button");
    add.textContent = "+";
    add.title = "add this item to the user's history";
    add.dataset.item = it.item_id;
    add.addEventListener("click", () => addEvent(it.item_id));
    li.append(label, add);
    ul.append(li);
  }
}

// POST /items body built from the server's own schema: fill id/title/text-like fields.
function resolve(schema) {
  let s = schema;
  while (s && s.$ref) s = state.spec.components.schemas[s.$ref.split("/").pop()];
  if (s && s.anyOf) s = resolve(s.anyOf.find((x) => resolve(x).type !== "null"));
  return s || {};
}

function buildItem(schema, v) {
  const s = resolve(schema);
  const out = {};
  for (const [name, p0] of Object.entries(s.properties || {})) {
    const p = resolve(p0);
    const n = name.toLowerCase();
    if (p.type === "array" && p.items && resolve(p.items).properties) out[name] = [buildItem(p.items, v)];
    else if (n === "item_id" || n === "id") out[name] = v.id;
    else if (n === "title" || n === "name") out[name] = v.title;
    else if (n === "text" || n === "description")
      out[name] = "title" in (s.properties || {}) ? v.text || v.title : [v.title, v.text].filter(Boolean).join(". ");
    else if ((s.required || []).includes(name)) {
      // Any other required field: a string gets the title, a list of strings the description's words.
      if (p.type === "string") out[name] = v.title;
      else if (p.type === "array") out[name] = v.text ? v.text.split(/[,;]\s*/).filter(Boolean) : [];
    }
  }
  return out;
}

async function addItem(ev) {
  ev.preventDefault();
  const v = { id: $("item-id").value.trim(), title: $("item-title").value.trim(), text: $("item-text").value.trim() };
  const content = state.itemsOp.requestBody.content["application/json"];
  const r = await api("/items", { method: "POST", headers: writeHeaders(), body: JSON.stringify(buildItem(content.schema, v)) });
  const out = $("item-result");
  if (r.status !== 200 && r.status !== 201) {
    out.textContent = `refused (${r.status}): ${(r.body && r.body.detail) || ""}`;
    out.className = "message bad";
    return;
  }
  out.className = "message";
  out.textContent = `item ${v.id} registered.`;
  await refresh();
  // Where does the new item rank for this user, per text-capable model?
  for (const b of state.bundles.filter((x) => x.model.toLowerCase().includes("unisrec"))) {
    const rr = await api(`/recommend/${encodeURIComponent(user())}?k=1000&model=${encodeURIComponent(b.name)}`);
    const items = (rr.body && rr.body.items) || [];
    const rank = items.findIndex((x) => x.item_id === v.id);
    const line = document.createElement("div");
    line.className = "new-item";
    line.textContent = rank >= 0
      ? `${b.name}: new item ${v.id} ranks #${rank + 1} for ${user()} (score ${items[rank].score.toFixed(3)})`
      : `${b.name}: new item ${v.id} is not in this user's top 1000`;
    out.append(line);
  }
}

function init() {
  $("apikey").value = localStorage.getItem("seqrec-key") || "";
  $("apikey").addEventListener("change", () => localStorage.setItem("seqrec-key", apiKey()));
  renderUserList();
  $("load").addEventListener("click", refresh);
  $("user").addEventListener("keydown", (e) => { if (e.key === "Enter") refresh(); });
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });
  $("item-form").addEventListener("submit", addItem);
  detectItemsEndpoint().then(refresh).then(search).then(() => { document.body.dataset.ready = "1"; });
}

init();
