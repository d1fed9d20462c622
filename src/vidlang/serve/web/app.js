// vidlang web page: search an index, show each hit's frames, word heat strips and player; caption clips.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail;
    const message = typeof detail === "string" ? detail
      : Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ")
      : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function seconds(t) { return t === null || t === undefined ? "" : `${t.toFixed(1)} s`; }

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// Similarity -> colour: dark blue (low) to yellow (high), relative to the word's own range over the clip.
function heatColour(value, lo, hi) {
  const x = hi > lo ? (value - lo) / (hi - lo) : 0.5;
  const hue = 240 - 180 * x, light = 22 + 38 * x;
  return `hsl(${hue.toFixed(0)}, 85%, ${light.toFixed(0)}%)`;
}

function seek(video, start, end) {
  if (!video) return;
  video.currentTime = start || 0;
  video.dataset.end = end === null || end === undefined ? "" : String(end);
  video.play().catch(() => {});
}

function heatRow(word, hit, video) {
  const row = document.createElement("div");
  row.className = "heat-row";
  const label = document.createElement("span");
  label.className = "word";
  label.textContent = word.word;
  label.title = `${word.word}: best ${seconds(word.start_s)}–${seconds(word.end_s)} (score ${word.score.toFixed(3)})`;
  const strip = document.createElement("div");
  strip.className = "heat";
  strip.setAttribute("role", "group");
  strip.setAttribute("aria-label",
    `match of "${word.word}" over time; best span ${seconds(word.start_s)} to ${seconds(word.end_s)}`);
  const lo = Math.min(...word.per_frame), hi = Math.max(...word.per_frame);
  word.per_frame.forEach((value, i) => {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.className = "cell" + (i === word.frame ? " best" : "");
    cell.style.background = heatColour(value, lo, hi);
    const t = hit.frame_times ? hit.frame_times[i] : null;
    cell.title = `${word.word} at ${t === null ? "frame " + i : seconds(t)}: ${value.toFixed(3)}`;
    cell.setAttribute("aria-label", cell.title);
    cell.addEventListener("click", () => seek(video, t, null));
    strip.appendChild(cell);
  });
  row.append(label, strip);
  return row;
}

function renderHit(hit) {
  const node = $("#hit-template").content.firstElementChild.cloneNode(true);
  const span = hit.start_s !== null || hit.end_s !== null ? ` [${seconds(hit.start_s || 0)}–${seconds(hit.end_s)}]` : "";
  $(".hit-title", node).textContent = `${hit.rank}. ${hit.video_id}${span}`;
  $(".scores", node).textContent = `score ${hit.score.toFixed(3)} · s1 ${hit.s1.toFixed(3)} · s2 ${hit.s2.toFixed(3)}`
    + (hit.s3 === null ? "" : ` · s3 ${hit.s3.toFixed(3)}`)
    + (hit.spoken === null || hit.spoken === undefined ? ""
      : ` · visual ${hit.visual.toFixed(3)} · spoken ${hit.spoken.toFixed(3)} · matched: ${hit.matched}`);
  const img = $(".strip", node);
  img.src = hit.strip_url;
  img.alt = `frames of ${hit.video_id}`;
  img.addEventListener("error", () => { img.alt = `no frames available for ${hit.video_id}`; img.removeAttribute("src"); });
  let video = null;
  if (hit.video_url) {
    video = document.createElement("video");
    video.controls = true;
    video.preload = "metadata";
    const start = hit.start_s || 0;
    video.src = `${hit.video_url}#t=${start}${hit.end_s !== null ? "," + hit.end_s : ""}`;
    video.setAttribute("aria-label", `play ${hit.video_id} from ${seconds(start)}`);
    video.addEventListener("timeupdate", () => {
      const end = parseFloat(video.dataset.end);
      if (!Number.isNaN(end) && video.currentTime >= end) video.pause();
    });
    $(".player", node).appendChild(video);
  } else {
    $(".player", node).textContent = "video not served (start the server with --media-root)";
    $(".player", node).classList.add("muted");
  }
  if (hit.spoken_text) {  // the clip's best-matching speech; a click plays from when it was said
    const said = $(".spoken", node);
    said.hidden = false;
    said.textContent = `said ${seconds(hit.spoken_start_s)}–${seconds(hit.spoken_end_s)}: “${hit.spoken_text}”`;
    said.setAttribute("aria-label", `play ${hit.video_id} from ${seconds(hit.spoken_start_s)}, where it says: ${hit.spoken_text}`);
    said.disabled = !video;
    said.addEventListener("click", () => seek(video, hit.spoken_start_s, hit.spoken_end_s));
  }
  const rows = $(".heat-rows", node);
  hit.alignments.forEach((word) => rows.appendChild(heatRow(word, hit, video)));
  const button = $(".caption-button", node), out = $(".caption", node);
  button.setAttribute("aria-label", `caption ${hit.video_id}`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    setStatus(out, "captioning…");
    try {
      const body = { video_id: hit.video_id };
      if (hit.start_s !== null) body.start = hit.start_s;
      if (hit.end_s !== null) body.end = hit.end_s;
      const res = await api("/api/caption/clip", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      setStatus(out, res.caption ? `“${res.caption}”` : "(empty caption)");
    } catch (e) { setStatus(out, e.message, true); }
    button.disabled = false;
  });
  return node;
}

async function runSearch(event) {
  event.preventDefault();
  const status = $("#search-status"), list = $("#results");
  const q = $("#q").value.trim(), k = $("#k").value || "5";
  if (!q) { setStatus(status, "type a query", true); return; }
  setStatus(status, "searching…");
  try {
    const t0 = performance.now();
    const res = await api(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    list.replaceChildren(...res.hits.map(renderHit));
    setStatus(status, `${res.hits.length} of ${res.clips} clips for “${res.query}” (${Math.round(performance.now() - t0)} ms)`);
  } catch (e) {
    list.replaceChildren();
    setStatus(status, e.message, true);
  }
}

async function runUpload(event) {
  event.preventDefault();
  const status = $("#upload-status"), out = $("#upload-caption"), file = $("#file").files[0];
  if (!file) { setStatus(status, "choose a video file", true); return; }
  const form = new FormData();
  form.append("file", file);
  setStatus(status, `captioning ${file.name}…`);
  out.textContent = "";
  try {
    const res = await api("/api/caption/upload", { method: "POST", body: form });
    setStatus(status, `${file.name}: ${res.features} features (${res.extractor}, ${res.duration ? res.duration.toFixed(1) + " s" : "?"})`);
    out.textContent = res.caption ? `“${res.caption}”` : "(empty caption)";
  } catch (e) { setStatus(status, e.message, true); }
}

async function showHealth() {
  try {
    const h = await api("/health");
    const parts = [`${h.clips} clips indexed`, h.captioner ? "captioner loaded" : "no captioner"];
    if (h.captioner) parts.push(h.uploads ? `uploads via ${h.extractor}` : `uploads off: ${h.uploads_off_reason}`);
    $("#health").textContent = parts.join(" · ");
    if (!h.captioner) document.querySelectorAll("#upload-form button").forEach((b) => { b.disabled = true; });
  } catch (e) { setStatus($("#health"), `server unreachable: ${e.message}`, true); }
}

$("#search-form").addEventListener("submit", runSearch);
$("#upload-form").addEventListener("submit", runUpload);
showHealth();
