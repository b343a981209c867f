// msgin5g SCM-S console: plain DOM, no external assets (SPEC D15).
"use strict";
const $ = (sel) => document.querySelector(sel);
const api = async (method, path, body) => {
  const opts = { method, headers: { "X-Msgin5g-Console": "1" }, credentials: "same-origin" };
  if (body !== undefined) { opts.body = typeof body === "string" ? body : JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch("/console/api/" + path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: r.statusText }; }
  if (r.status === 401 && path !== "login") showLogin();
  return { ok: r.ok, status: r.status, data };
};
const text = (v) => document.createTextNode(v === undefined || v === null ? "" : String(v));
const cell = (row, v) => { const td = document.createElement("td"); td.appendChild(typeof v === "object" && v instanceof Node ? v : text(v)); row.appendChild(td); return td; };
const button = (label, fn, cls) => { const b = document.createElement("button"); b.textContent = label; if (cls) b.className = cls; b.addEventListener("click", fn); return b; };
const say = (el, msg, ok) => { el.textContent = msg; el.className = ok ? "ok" : "error"; };

function scope(doc) {
  const ids = doc.valUeIds;
  if (!ids) return "whole domain";
  const parts = (ids.uris || []).slice(0, 3);
  for (const r of ids.imeiRanges || []) {
    let p = "TAC " + r.tac;
    if (r.snrRange) p += " SNR " + r.snrRange.low + "-" + r.snrRange.high;
    if (r.snrs) p += " SNRs " + r.snrs.join(",");
    parts.push(p);
  }
  return parts.join(", ");
}

// -- tabs and login -------------------------------------------------------------------------
let events = null;
function showTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll("section.tab").forEach((s) => { s.hidden = s.id !== name; });
  $("#login").hidden = true;
  ({ docs: loadDocs, gateways: loadGateways, keys: loadKeys, live: startLive, resolve: () => {} })[name]();
}
function showLogin() {
  document.querySelectorAll("section.tab").forEach((s) => { s.hidden = true; });
  $("#login").hidden = false;
}
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (await login($("#token").value)) showTab("docs");
});
async function login(token) {
  const r = await api("POST", "login", { token });
  if (!r.ok) { say($("#login-error"), "Login refused: " + r.data.error, false); return false; }
  return true;
}

// -- documents ------------------------------------------------------------------------------
let current = null;
async function loadDocs() {
  const q = encodeURIComponent($("#search").value);
  const r = await api("GET", "docs?q=" + q);
  if (!r.ok) return;
  const tbody = $("#doc-table tbody");
  tbody.replaceChildren();
  $("#doc-count").textContent = r.data.total + " documents" + (r.data.total > r.data.docs.length ? " (first " + r.data.docs.length + " shown)" : "")
    + (r.data.partial ? " — search stopped after 50,000 documents; narrow it" : "");
  for (const d of r.data.docs) {
    const tr = document.createElement("tr");
    tr.dataset.id = d.ueConfigDocId;
    cell(tr, d.ueConfigDocId); cell(tr, d.configName); cell(tr, scope(d));
    cell(tr, button("Edit", () => openDoc(d.ueConfigDocId)));
    tbody.appendChild(tr);
  }
}
async function openDoc(id) {
  const r = await api("GET", "docs/" + encodeURIComponent(id));
  if (!r.ok) { say($("#doc-message"), r.data.error, false); return; }
  current = id;
  $("#editor").hidden = false; $("#delete-doc").hidden = false;
  $("#editor-title").textContent = "Document " + id;
  $("#doc-text").value = JSON.stringify(r.data, null, 2);
  $("#doc-message").textContent = "";
}
$("#new-doc").addEventListener("click", () => {
  current = null;
  $("#editor").hidden = false; $("#delete-doc").hidden = true;
  $("#editor-title").textContent = "New document";
  $("#doc-text").value = JSON.stringify({ configName: "", valServiceDomain: "msgin5g.example",
    valUeIds: { uris: [] }, ueConfigs: [{ configType: "ON_NETWORK",
      configData: { msgin5gServerAddress: "coap://msgin5g.example", ueServiceId: "", segmentSize: 1024 } }] }, null, 2);
  $("#doc-message").textContent = "";
});
$("#save-doc").addEventListener("click", async () => {
  const body = $("#doc-text").value;
  const r = current === null ? await api("POST", "docs", body) : await api("PUT", "docs/" + encodeURIComponent(current), body);
  if (!r.ok) { say($("#doc-message"), r.data.code + " " + r.data.error, false); return; }
  current = r.data.ueConfigDocId;
  $("#editor-title").textContent = "Document " + current; $("#delete-doc").hidden = false;
  $("#doc-text").value = JSON.stringify(r.data, null, 2);
  say($("#doc-message"), r.status === 201 ? "created " + current : "saved " + current, true);
  loadDocs();
});
$("#delete-doc").addEventListener("click", async () => {
  if (current === null || !window.confirm("Delete " + current + "?")) return;
  const r = await api("DELETE", "docs/" + encodeURIComponent(current));
  if (!r.ok) { say($("#doc-message"), r.data.error, false); return; }
  say($("#doc-message"), "deleted " + current, true);
  current = null; $("#delete-doc").hidden = true;
  loadDocs();
});
$("#close-doc").addEventListener("click", () => { $("#editor").hidden = true; current = null; });
$("#search-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadDocs(); });

// -- what would this UE get -----------------------------------------------------------------
$("#resolve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const qs = ["ue-uri", "ue-type", "ue-snr", "ue-vendor"].map((k) => k + "=" + encodeURIComponent($("#" + k).value.trim())).join("&");
  const r = await api("GET", "resolve?" + qs);
  const tbody = $("#resolve-table tbody");
  tbody.replaceChildren();
  $("#resolve-applied").textContent = "";
  if (!r.ok) { say($("#resolve-answer"), r.data.error, false); return; }
  say($("#resolve-answer"), r.data.answer === "2.05"
    ? r.data.ue + " would get 2.05 with " + r.data.documents.length + " applicable document(s); the first applies."
    : r.data.ue + " would get 4.04: no document applies (the UE falls back to its pre-configuration).", r.data.answer === "2.05");
  r.data.documents.forEach((d, i) => {
    const tr = document.createElement("tr");
    cell(tr, i + 1); cell(tr, d.ueConfigDocId); cell(tr, d.configName);
    cell(tr, d.why + (d.skipped ? " — skipped: " + d.skipped : ""));
    cell(tr, d.applied ? "applied" : "");
    tbody.appendChild(tr);
  });
  if (r.data.applied) $("#resolve-applied").textContent = JSON.stringify(r.data.applied, null, 2);
});

// -- gateway registry -----------------------------------------------------------------------
async function loadGateways() {
  const r = await api("GET", "gateways");
  if (!r.ok) return;
  const tbody = $("#gw-table tbody");
  tbody.replaceChildren();
  for (const [id, cov] of Object.entries(r.data)) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    cell(tr, id); cell(tr, JSON.stringify(cov));
    const td = cell(tr, button("Edit", () => { $("#gw-id").value = id; $("#gw-coverage").value = JSON.stringify(cov); }));
    td.appendChild(button("Delete", async () => {
      const d = await api("DELETE", "gateways/" + encodeURIComponent(id));
      say($("#gw-message"), d.ok ? "deleted gateway " + id : d.data.error, d.ok); loadGateways();
    }, "danger"));
    tbody.appendChild(tr);
  }
}
$("#gw-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = $("#gw-id").value.trim();
  if (!id) { say($("#gw-message"), "give the gateway id", false); return; }
  const r = await api("PUT", "gateways/" + encodeURIComponent(id), $("#gw-coverage").value);
  say($("#gw-message"), r.ok ? "saved gateway " + id : r.data.error, r.ok);
  loadGateways();
});

// -- keys -----------------------------------------------------------------------------------
async function loadKeys() {
  const r = await api("GET", "keys");
  if (!r.ok) return;
  $("#keys-note").textContent = r.data.secured ? "" : "Insecure mode: no key registry.";
  const tbody = $("#keys-table tbody");
  tbody.replaceChildren();
  for (const k of r.data.keys) {
    const tr = document.createElement("tr");
    tr.dataset.kid = k.kid;
    cell(tr, k.kid); cell(tr, k.identity); cell(tr, k.role); cell(tr, k.created);
    cell(tr, k.active ? "active" : "revoked " + (k.revoked || ""));
    cell(tr, k.active ? button("Revoke", async () => {
      if (!window.confirm("Revoke key " + k.kid + " of " + k.identity + "?")) return;
      const d = await api("POST", "keys/" + k.kid + "/revoke");
      say($("#keys-message"), d.ok ? "revoked " + k.kid : d.data.error, d.ok); loadKeys();
    }, "danger") : "");
    tbody.appendChild(tr);
  }
}

// -- live counters --------------------------------------------------------------------------
function startLive() {
  if (events) return;
  events = new EventSource("/console/api/events");
  events.addEventListener("counters", (ev) => {
    const data = JSON.parse(ev.data);
    const tbody = $("#live-table tbody");
    tbody.replaceChildren();
    for (const [k, v] of Object.entries(data)) {
      const tr = document.createElement("tr"); tr.dataset.counter = k;
      cell(tr, k); cell(tr, v); tbody.appendChild(tr);
    }
    $("#live-state").textContent = "last update " + new Date().toLocaleTimeString();
  });
  events.onerror = () => { $("#live-state").textContent = "disconnected; retrying"; };
}

// -- start ----------------------------------------------------------------------------------
(async () => {
  const m = /[#&]token=([^&]+)/.exec(window.location.hash);
  if (m) { await login(decodeURIComponent(m[1])); history.replaceState(null, "", window.location.pathname); }
  const who = await api("GET", "whoami");
  $("#mode").textContent = who.data.secured ? "secured (OSCORE)" : "INSECURE lab mode";
  if (!who.data.authorized) { showLogin(); return; }
  showTab("docs");
})();
