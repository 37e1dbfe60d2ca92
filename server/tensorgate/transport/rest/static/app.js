// The browser page: models, an inference form, and a live view polled from the REST API.
"use strict";

const $ = (selector) => document.querySelector(selector);
const history = new Map(); // model -> {count, ns, time, rates: []}
const tokenHistory = new Map(); // generation model -> the last poll's totals and rates
let selected = null;

// A server with access control needs a bearer token: typed into the header, kept for the tab.
function withToken(options) {
  const token = sessionStorage.getItem("tensorgate-token");
  if (!token) return options;
  const headers = { ...((options && options.headers) || {}), Authorization: `Bearer ${token}` };
  return { ...(options || {}), headers };
}

async function api(path, options) {
  const response = await fetch(path, withToken(options));
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(body && body.error ? `${response.status}: ${body.error}` : `HTTP ${response.status}`);
  }
  return body;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function loadServer() {
  try {
    const meta = await api("/v2");
    $("#server").textContent = `${meta.name} ${meta.version} · extensions: ${meta.extensions.join(", ")}`;
    const ready = await fetch("/v2/health/ready");
    $("#health").textContent = ready.ok ? "ready" : "not ready";
    $("#health").className = "badge " + (ready.ok ? "ok" : "bad");
  } catch (error) {
    $("#server").textContent = String(error);
  }
}

async function loadModels() {
  const index = await api("/v2/repository/index", { method: "POST", body: "{}" });
  const body = $("#models tbody");
  body.replaceChildren();
  for (const model of index) {
    const row = body.insertRow();
    row.dataset.model = model.name;
    cell(row, model.name);
    cell(row, model.version || "–");
    cell(row, model.state + (model.reason ? ` (${model.reason})` : ""), model.state === "READY" ? "" : "error");
    if (model.state === "READY") row.addEventListener("click", () => selectModel(model.name));
  }
}

function template(tensor) {
  const shape = tensor.shape.map((d) => (d < 0 ? 1 : d));
  const count = shape.reduce((a, b) => a * b, 1);
  const value = tensor.datatype === "BYTES" ? "hello" : tensor.datatype === "BOOL" ? true : 1;
  return { name: tensor.name, shape, datatype: tensor.datatype, data: new Array(count).fill(value) };
}

async function selectModel(name) {
  selected = name;
  for (const row of document.querySelectorAll("#models tbody tr")) {
    row.classList.toggle("selected", row.dataset.model === name);
  }
  const [meta, config] = await Promise.all([
    api(`/v2/models/${encodeURIComponent(name)}`),
    api(`/v2/models/${encodeURIComponent(name)}/config`),
  ]);
  $("#model-panel").hidden = false;
  $("#model-title").textContent = `${meta.name} · ${meta.platform} · versions ${meta.versions.join(", ")}`;
  const body = $("#tensors tbody");
  body.replaceChildren();
  for (const [kind, tensors] of [["input", meta.inputs], ["output", meta.outputs]]) {
    for (const tensor of tensors) {
      const row = body.insertRow();
      cell(row, kind);
      cell(row, tensor.name);
      cell(row, tensor.datatype);
      cell(row, JSON.stringify(tensor.shape));
    }
  }
  $("#config").textContent = JSON.stringify(config, null, 2);
  const request = { inputs: meta.inputs.map(template) };
  // One input per line: readable for small tensors, and still valid JSON to edit.
  const lines = request.inputs.map((tensor) => "  " + JSON.stringify(tensor));
  $("#request").value = `{"inputs": [\n${lines.join(",\n")}\n]}`;
  $("#result").textContent = "";
  $("#infer-status").textContent = "";
}

async function sendInference(event) {
  event.preventDefault();
  if (!selected) return;
  const status = $("#infer-status");
  const result = $("#result");
  status.textContent = "sending…";
  const started = performance.now();
  try {
    const response = await api(`/v2/models/${encodeURIComponent(selected)}/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: $("#request").value,
    });
    result.className = "";
    result.textContent = JSON.stringify(response, null, 1).replace(/\n\s+(-?[\d.e+-]+|true|false)(,?)(?=\n)/g, " $1$2");
    status.textContent = `200 in ${(performance.now() - started).toFixed(1)} ms`;
  } catch (error) {
    result.className = "error";
    result.textContent = String(error.message);
    status.textContent = "failed";
  }
}

function bars(batchStats) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "bars");
  const entries = batchStats.map((b) => [b.batch_size, b.compute_infer.count]).sort((a, b) => a[0] - b[0]);
  const width = Math.max(60, entries.length * 22);
  svg.setAttribute("width", width);
  svg.setAttribute("height", 44);
  const max = Math.max(1, ...entries.map((e) => e[1]));
  entries.forEach(([size, count], i) => {
    const height = Math.max(1, (count / max) * 30);
    const rect = document.createElementNS(svg.namespaceURI, "rect");
    Object.entries({ x: i * 22, y: 32 - height, width: 16, height }).forEach(([k, v]) => rect.setAttribute(k, v));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `batch ${size}: ${count} executions`;
    rect.appendChild(title);
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", i * 22);
    label.setAttribute("y", 43);
    label.textContent = size;
    svg.append(rect, label);
  });
  return svg;
}

function sparkline(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", 120);
  svg.setAttribute("height", 30);
  const max = Math.max(1, ...values);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", values.map((v, i) => `${i * 2},${29 - (v / max) * 27}`).join(" "));
  svg.appendChild(line);
  return svg;
}

async function poll() {
  try {
    const [stats, scheduler] = await Promise.all([api("/v2/models/stats"), api("/v2/scheduler")]);
    const queues = new Map(scheduler.models.map((m) => [`${m.name}/${m.version}`, m]));
    const now = performance.now();
    const body = $("#live tbody");
    for (const model of stats.model_stats) {
      const key = `${model.name}/${model.version}`;
      const success = model.inference_stats.success;
      const last = history.get(key) || { count: success.count, ns: success.ns, time: now, rates: [] };
      const seconds = Math.max(1e-3, (now - last.time) / 1000);
      const done = success.count - last.count;
      const rate = done / seconds;
      const latency = done > 0 ? (success.ns - last.ns) / done / 1e6 : last.latency;
      const rates = [...last.rates, rate].slice(-60);
      history.set(key, { count: success.count, ns: success.ns, time: now, rates, latency });
      const queue = queues.get(key) || { queued: 0, executing: 0, instances: 0 };
      // Rows are updated in place, so the table does not flicker (or go stale under a test).
      const id = `live-${model.name}-v${model.version}`;
      let row = document.getElementById(id);
      if (!row) {
        row = body.insertRow();
        row.id = id;
        for (const name of ["model", "count", "rate", "spark", "latency", "queued", "executing", "batches"]) {
          row.insertCell().className = name;
        }
        row.cells[0].textContent = key;
      }
      row.querySelector(".count").textContent = String(success.count);
      row.querySelector(".rate").textContent = rate.toFixed(1);
      row.querySelector(".spark").replaceChildren(sparkline(rates));
      row.querySelector(".latency").textContent = latency == null ? "–" : `${latency.toFixed(2)} ms`;
      row.querySelector(".queued").textContent = String(queue.queued);
      row.querySelector(".executing").textContent = `${queue.executing} / ${queue.instances}`;
      row.querySelector(".batches").replaceChildren(bars(model.batch_stats));
    }
    showGeneration(scheduler.models, now);
    $("#live").dataset.updated = String(Date.now());
  } catch (error) {
    $("#live-panel h2 small").textContent = `(${error.message})`;
  }
}

// Mean of a latency between two polls, from the running count and sum of seconds.
function meanMs(count, seconds, last, lastCount, lastSeconds) {
  const done = count - lastCount;
  return done > 0 ? ((seconds - lastSeconds) / done) * 1000 : last;
}

function showGeneration(models, now) {
  const body = $("#generation tbody");
  for (const model of models) {
    const engine = model.generation;
    if (!engine) continue;
    $("#generation-panel").hidden = false;
    const key = `${model.name}/${model.version}`;
    const totals = {
      generated: engine.generated_tokens || 0,
      firstCount: engine.first_token_count || 0,
      firstSeconds: engine.first_token_seconds || 0,
      interCount: engine.inter_token_count || 0,
      interSeconds: engine.inter_token_seconds || 0,
    };
    const last = tokenHistory.get(key) || { ...totals, time: now, rates: [], first: null, inter: null };
    const seconds = Math.max(1e-3, (now - last.time) / 1000);
    const rate = (totals.generated - last.generated) / seconds;
    const rates = [...last.rates, rate].slice(-60);
    const first = meanMs(totals.firstCount, totals.firstSeconds, last.first, last.firstCount, last.firstSeconds);
    const inter = meanMs(totals.interCount, totals.interSeconds, last.inter, last.interCount, last.interSeconds);
    tokenHistory.set(key, { ...totals, time: now, rates, first, inter });
    const id = `gen-${model.name}-v${model.version}`;
    let row = document.getElementById(id);
    if (!row) {
      row = body.insertRow();
      row.id = id;
      for (const name of ["model", "sequences", "rate", "spark", "first", "inter", "blocks", "prefix", "preempted"]) {
        row.insertCell().className = name;
      }
      row.cells[0].textContent = key;
    }
    const used = engine.kv_blocks_used || 0;
    const total = used + (engine.kv_blocks_free || 0);
    const queried = engine.prefix_cache_queried_tokens || 0;
    const hits = engine.prefix_cache_hit_tokens || 0;
    row.querySelector(".sequences").textContent = `${engine.running || 0} / ${engine.waiting || 0}`;
    row.querySelector(".rate").textContent = rate.toFixed(1);
    row.querySelector(".spark").replaceChildren(sparkline(rates));
    row.querySelector(".first").textContent = first == null ? "–" : `${first.toFixed(1)} ms`;
    row.querySelector(".inter").textContent = inter == null ? "–" : `${inter.toFixed(1)} ms`;
    row.querySelector(".blocks").textContent = `${used} / ${total}`;
    row.querySelector(".prefix").textContent = queried ? `${((100 * hits) / queried).toFixed(0)} %` : "–";
    row.querySelector(".preempted").textContent = String(engine.preemptions || 0);
    row.dataset.generated = String(totals.generated);
  }
}

$("#infer-form").addEventListener("submit", sendInference);
$("#token").value = sessionStorage.getItem("tensorgate-token") || "";
$("#token").addEventListener("change", () => {
  sessionStorage.setItem("tensorgate-token", $("#token").value.trim());
  $("#live-panel h2 small").textContent = "(polls /v2/models/stats and /v2/scheduler every second)";
  loadServer();
  loadModels().catch((error) => { $("#server").textContent = String(error); });
});
loadServer();
loadModels().catch((error) => { $("#server").textContent = String(error); });
poll();
setInterval(poll, 1000);
setInterval(loadServer, 5000);
