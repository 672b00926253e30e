// The xtts-stream page: speak text through WS /v1/audio/stream and hear it while it is spoken.
//
// Audio arrives as s16le PCM frames of any size. A small jitter buffer holds
// JITTER_S of audio before playback starts (and again after a starvation);
// from then on every frame is scheduled right after the previous one on the
// Web Audio clock. `window.xttsPage` holds what happened, for the page's
// own test and for anyone curious in the console.
"use strict";

const JITTER_S = 0.12;
const PEAK_SAMPLES = 128;          // one waveform column per this many samples
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");

const page = window.xttsPage = {
  scheduledBuffers: 0, scheduledSeconds: 0, receivedSamples: 0, underruns: 0,
  firstAudioMs: null, playStartMs: null, chunks: [], done: null, errors: [], state: "idle",
};

let ws = null, wsReady = null;
let ctx = null, rate = 0, nextTime = 0, playing = false, startTime = 0;
let pending = [], pendingSeconds = 0, sources = [];
let peaks = [], carry = null, tOpen = 0, feeding = null;

// -- the connection -------------------------------------------------------------

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function connect() {
  if (ws && ws.readyState <= 1) return wsReady;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/audio/stream";
  const key = $("key").value.trim();
  try {
    ws = key ? new WebSocket(url, ["bearer." + key]) : new WebSocket(url);
  } catch (e) {
    ws = null;
    return Promise.reject(new Error("cannot open the WebSocket: " + e.message));
  }
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onEvent(JSON.parse(ev.data)) : onAudio(ev.data));
  ws.onclose = (ev) => { if (page.state === "speaking") fail("connection closed (" + ev.code + ")"); };
  wsReady = new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("cannot open the WebSocket (wrong API key?)"));
  });
  return wsReady;
}

function send(msg) { ws.send(JSON.stringify(msg)); }

async function start(deltas) {
  reset();
  try { await connect(); } catch (e) { fail(e.message); return; }
  ctx = ctx || new AudioContext();
  await ctx.resume();
  setState("speaking");
  tOpen = performance.now();
  send({ type: "open", profile: $("profile").value, voice: $("voice").value, speed: Number($("speed").value) });
  if (!deltas) { send({ type: "append", text: $("text").value }); send({ type: "end" }); return; }
  feed(deltas);
}

function feed(deltas) {
  // As an LLM would: small pieces at a steady pace, then the end.
  const pace = Math.max(0, Number($("pace").value) || 0);
  let i = 0;
  const step = () => {
    if (page.state !== "speaking") return;
    if (i < deltas.length) { send({ type: "append", text: deltas[i++] }); feeding = setTimeout(step, pace); }
    else send({ type: "end" });
  };
  step();
}

function words(text) { return text.match(/\S+\s*/g) || []; }

// -- events and audio -------------------------------------------------------------

function onEvent(ev) {
  if (ev.type === "accepted") {
    rate = ev.sample_rate;
  } else if (ev.type === "chunk") {
    page.chunks.push(ev);
    draw();
  } else if (ev.type === "done") {
    page.done = ev.metrics;
    flush(true);
    showMetrics(ev.metrics);
    setState(ev.metrics && ev.metrics.cancelled ? "cancelled" : "done");
    refreshServiceMetrics();
  } else if (ev.type === "error") {
    fail(ev.code + ": " + ev.message + (ev.param ? " (field: " + ev.param + ")" : ""));
  }
}

function onAudio(buffer) {
  if (page.state !== "speaking" || !rate) return;
  let bytes = new Uint8Array(buffer);
  if (carry) { const joined = new Uint8Array(carry.length + bytes.length); joined.set(carry); joined.set(bytes, carry.length); bytes = joined; carry = null; }
  if (bytes.length % 2) { carry = bytes.slice(-1); bytes = bytes.slice(0, -1); }
  const pcm = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
  if (page.firstAudioMs === null) { page.firstAudioMs = performance.now() - tOpen; $("f-client-ttfa").textContent = ms(page.firstAudioMs); }
  const floats = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
  addPeaks(floats);
  page.receivedSamples += floats.length;
  pending.push(floats);
  pendingSeconds += floats.length / rate;
  flush(false);
  draw();
}

function flush(final) {
  if (!ctx || !pending.length) return;
  if (playing && nextTime < ctx.currentTime) { playing = false; page.underruns++; }   // starved: buffer again
  if (!playing) {
    if (pendingSeconds < JITTER_S && !final) return;
    playing = true;
    nextTime = ctx.currentTime + 0.02;
    if (page.playStartMs === null) { page.playStartMs = performance.now() - tOpen + 20; startTime = nextTime; $("f-play").textContent = ms(page.playStartMs); }
  }
  for (const floats of pending) schedule(floats);
  pending = []; pendingSeconds = 0;
  $("f-underruns").textContent = page.underruns + " / " + (page.done ? page.done.underruns : "…");
}

function schedule(floats) {
  const buf = ctx.createBuffer(1, floats.length, rate);   // the context resamples to its own rate
  buf.copyToChannel(floats, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  src.start(nextTime);
  src.onended = () => { sources = sources.filter((s) => s !== src); };
  sources.push(src);
  nextTime += buf.duration;
  page.scheduledBuffers++;
  page.scheduledSeconds += buf.duration;
}

function cancel() {
  if (page.state !== "speaking") return;
  clearTimeout(feeding);
  send({ type: "cancel" });
  for (const src of sources) { try { src.stop(); } catch (e) { /* already ended */ } }
  sources = []; pending = []; pendingSeconds = 0;
  setState("cancelling");
}

// -- what the page shows ------------------------------------------------------

function reset() {
  clearTimeout(feeding);
  for (const src of sources) { try { src.stop(); } catch (e) { /* already ended */ } }
  Object.assign(page, { scheduledBuffers: 0, scheduledSeconds: 0, receivedSamples: 0, underruns: 0,
    firstAudioMs: null, playStartMs: null, chunks: [], done: null, errors: [] });
  rate = 0; playing = false; pending = []; pendingSeconds = 0; sources = []; peaks = []; carry = null;
  for (const id of ["f-client-ttfa", "f-play", "f-ttfa", "f-played", "f-rtf", "f-audio", "f-chunks", "f-underruns"]) $(id).textContent = "–";
  draw();
}

function fail(message) {
  page.errors.push(message);
  setState("error");
  $("state").textContent = message;
  $("state").className = "note error";
}

function setState(state) {
  page.state = state;
  $("state").textContent = state === "idle" ? "" : state;
  $("state").className = "note";
  $("cancel").disabled = state !== "speaking";
  $("speak").disabled = $("stream").disabled = state === "speaking" || state === "cancelling";
}

function showMetrics(m) {
  if (!m) return;
  $("f-ttfa").textContent = ms(m.ttfa_ms);
  $("f-played").textContent = ms(m.played_ttfa_ms);
  $("f-rtf").textContent = m.rtf == null ? "–" : m.rtf.toFixed(3);
  $("f-audio").textContent = m.audio_s == null ? "–" : m.audio_s.toFixed(2) + " s";
  $("f-chunks").textContent = m.chunks;
  $("f-underruns").textContent = page.underruns + " / " + m.underruns;
}

function ms(v) { return v == null ? "–" : v.toFixed(1) + " ms"; }

function addPeaks(floats) {
  for (let i = 0; i < floats.length; i += PEAK_SAMPLES) {
    let lo = 0, hi = 0;
    for (let j = i; j < Math.min(i + PEAK_SAMPLES, floats.length); j++) { lo = Math.min(lo, floats[j]); hi = Math.max(hi, floats[j]); }
    peaks.push([lo, hi]);
  }
}

function draw() {
  const canvas = $("wave"), g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.fillStyle = "#10141c"; g.fillRect(0, 0, w, h);
  const total = Math.max(page.receivedSamples, rate * 2, 1);
  const x = (sample) => (sample / total) * w;
  g.strokeStyle = "#5fa8ff";
  g.beginPath();
  peaks.forEach(([lo, hi], i) => { const px = x(i * PEAK_SAMPLES); g.moveTo(px, h / 2 - hi * h / 2); g.lineTo(px, h / 2 - lo * h / 2 + 1); });
  g.stroke();
  g.font = "11px system-ui"; g.fillStyle = "#ffd166"; g.strokeStyle = "#ffd166";
  for (const c of page.chunks) {
    const px = Math.round(x(c.sample_offset)) + 0.5;
    g.beginPath(); g.moveTo(px, 0); g.lineTo(px, h); g.stroke();
    g.fillText("#" + c.index + " " + (c.text || "").trim().slice(0, 24), px + 3, 12 + (c.index % 3) * 13);
  }
  if (ctx && playing && rate) {
    const px = x((ctx.currentTime - startTime) * rate);
    g.fillStyle = "#ff5c5c"; g.fillRect(Math.min(px, w - 2), 0, 2, h);
  }
}

function animate() { if (page.state === "speaking" || playing) draw(); requestAnimationFrame(animate); }

// -- service-wide figures ------------------------------------------------------

function parseProm(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (m) { const key = m[1] + (m[2] || ""); out[key] = Number(m[3]); }
  }
  return out;
}

function sumOf(values, name) {
  return Object.entries(values).filter(([k]) => k === name || k.startsWith(name + "{")).reduce((a, [, v]) => a + v, 0);
}

async function refreshServiceMetrics() {
  try {
    const r = await fetch("/metrics", { headers: authHeaders() });
    if (!r.ok) throw new Error(r.status);
    const v = parseProm(await r.text());
    const count = sumOf(v, "xtts_ttfa_seconds_count"), sum = sumOf(v, "xtts_ttfa_seconds_sum");
    const rtfCount = sumOf(v, "xtts_rtf_count"), rtfSum = sumOf(v, "xtts_rtf_sum");
    const rows = [
      ["streams ended", sumOf(v, "xtts_streams_total")],
      ["mean TTFA", count ? (sum / count * 1000).toFixed(1) + " ms over " + count + " streams" : "–"],
      ["mean real-time factor", rtfCount ? (rtfSum / rtfCount).toFixed(3) : "–"],
      ["errors", sumOf(v, "xtts_errors_total")],
      ["underruns", sumOf(v, "xtts_underruns_total")],
      ["seam violations", sumOf(v, "xtts_seam_violations_total")],
      ["open streams", sumOf(v, "xtts_open_streams")],
      ["queue depth", sumOf(v, "xtts_queue_depth")],
      ["worker restarts", sumOf(v, "xtts_worker_restarts_total")],
    ];
    $("metrics").tBodies[0].innerHTML = rows.map(([k, val]) => `<tr><td>${k}</td><td>${val}</td></tr>`).join("");
  } catch (e) {
    $("metrics").tBodies[0].innerHTML = `<tr><td>metrics unavailable (${e.message})</td></tr>`;
  }
}

async function loadChoices() {
  try {
    const [ready, models, voices] = await Promise.all(["/ready", "/v1/models", "/v1/audio/voices"].map(
      (path) => fetch(path, { headers: authHeaders() })));
    const r = await ready.json();
    $("service").textContent = r.ready ? "ready" : "not ready";
    $("service").className = "badge " + (r.ready ? "ok" : "bad");
    const profiles = [...new Set((await models.json()).data.map((m) => m.profile))];
    $("profile").innerHTML = profiles.map((p) => `<option>${esc(p)}</option>`).join("");
    const names = (await voices.json()).data.filter((v) => !v.alias_of).map((v) => v.id);
    $("voice").innerHTML = names.map((n) => `<option value="${n === "default" ? "" : esc(n)}">${esc(n)}</option>`).join("");
  } catch (e) {
    $("service").textContent = "unreachable"; $("service").className = "badge bad";
  }
}

$("speak").onclick = () => start(null);
$("stream").onclick = () => start(words($("text").value));
$("cancel").onclick = cancel;
$("key").onchange = () => { if (ws) ws.close(); ws = null; loadChoices(); refreshServiceMetrics(); };
loadChoices();
refreshServiceMetrics();
setState("idle");
requestAnimationFrame(animate);
