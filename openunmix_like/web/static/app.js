// umx-web page: uploads, the job queue (live through server-sent events) and the stem player (Web Audio).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { models: [], jobs: new Map(), selected: null };

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

// ------------------------------------------------------------------ options

function currentModel() {
  return state.models.find((m) => m.name === $("#model").value) || state.models[0];
}

function renderTargets() {
  const model = currentModel();
  const box = $("#targets");
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const name of model ? model.targets : []) {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "checkbox", value: name, checked: true });
    label.append(input, ` ${name}`);
    box.append(label);
  }
  const hasVocals = model && model.targets.includes("vocals");
  $("#two-stems").disabled = !hasVocals;
  if (!hasVocals) $("#two-stems").checked = false;
  box.disabled = $("#two-stems").checked;
}

async function loadOptions() {
  state.models = await (await api("/api/models")).json();
  $("#model").innerHTML = "";
  for (const m of state.models) $("#model").append(new Option(m.label === m.name ? m.name : `${m.name}: ${m.label}`, m.name));
  renderTargets();
  const limits = await (await api("/api/limits")).json();
  $("#limits").textContent = `up to ${limits.max_minutes} minutes and ${limits.max_upload_mb} MB per file`;
}

function formFor(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", $("#model").value);
  const [ext, size] = $("#format").value.split(":");  // bits per sample, or kbit/s for mp3
  form.append("ext", ext);
  form.append(ext === "mp3" ? "bitrate" : "bits", size);
  if ($("#two-stems").checked) {
    form.append("targets", "vocals");
    form.append("residual", "accompaniment");
  } else {
    const chosen = [...$("#targets").querySelectorAll("input:checked")].map((i) => i.value);
    if (!chosen.length) throw new Error("choose at least one target");
    form.append("targets", chosen.join(","));
  }
  return form;
}

async function submit(files) {
  const error = $("#submit-error");
  error.hidden = true;
  // One upload at a time: the server queues them anyway, and the browser's memory stays small.
  for (const file of files) {
    try {
      const { id } = await (await api("/api/jobs", { method: "POST", body: formFor(file) })).json();
      if (!state.jobs.has(id)) upsertJob({ id, status: "queued", progress: 0, stems: [], error: null,
                                           filename: file.name, created: Date.now() / 1000 });
    } catch (e) {
      error.textContent = `${file.name}: ${e.message}`;
      error.hidden = false;
    }
  }
}

// ------------------------------------------------------------------ jobs

function upsertJob(job) {
  state.jobs.set(job.id, job);
  let row = document.getElementById(`job-${job.id}`);
  if (!row) {
    row = $("#job-template").content.firstElementChild.cloneNode(true);
    row.id = `job-${job.id}`;
    $(".open", row).addEventListener("click", () => openJob(job.id));
    $(".cancel", row).addEventListener("click", () => api(`/api/jobs/${job.id}`, { method: "DELETE" }));
    $(".delete", row).addEventListener("click", () => deleteJob(job.id));
    $("#jobs").prepend(row);
  }
  row.dataset.status = job.status;
  $(".name", row).textContent = job.filename;
  $(".name", row).title = job.filename;
  const running = job.status === "running";
  $(".status", row).textContent = running ? `${Math.round(job.progress * 100)} %` : job.status;
  $("progress", row).value = job.progress;
  $("progress", row).hidden = !(running || job.status === "queued");
  $(".open", row).hidden = job.status !== "done";
  $(".cancel", row).hidden = !(running || job.status === "queued");
  $(".delete", row).hidden = running || job.status === "queued";
  $(".error", row).textContent = job.error || "";
  $("#no-jobs").hidden = state.jobs.size > 0;
}

function removeJob(id) {
  state.jobs.delete(id);
  const row = document.getElementById(`job-${id}`);
  if (row) row.remove();
  if (state.selected === id) closePlayer();
  $("#no-jobs").hidden = state.jobs.size > 0;
}

async function deleteJob(id) {
  await api(`/api/jobs/${id}`, { method: "DELETE" });
  removeJob(id);
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    const before = state.jobs.get(job.id);
    upsertJob(job);
    // Open the first finished job by itself, so a single drop ends in the player.
    if (job.status === "done" && before && before.status !== "done" && !state.selected) openJob(job.id);
  });
  events.addEventListener("removed", (e) => removeJob(JSON.parse(e.data).id));
}

// ------------------------------------------------------------------ player

const player = {
  context: null, tracks: [], duration: 0, playing: false, startedAt: 0, offset: 0, compare: false,
  sources: [], frame: 0,

  time() {
    if (!this.playing) return this.offset;
    return Math.min(this.duration, this.offset + this.context.currentTime - this.startedAt);
  },

  // Gain of a track: its volume, unless muted, or another track is soloed, or the A/B switch excludes it.
  applyGains() {
    const stems = this.tracks.filter((t) => !t.mixture);
    const soloed = stems.some((t) => t.solo);
    for (const t of this.tracks) {
      const audible = t.mixture ? this.compare && !t.mute : !this.compare && !t.mute && (!soloed || t.solo);
      t.gain.gain.value = audible ? t.volume : 0;
      t.row.classList.toggle("silent", !audible);
    }
    this.drawAll();
  },

  play() {
    if (this.playing || !this.tracks.length) return;
    if (this.offset >= this.duration) this.offset = 0;
    const when = this.context.currentTime + 0.05;  // one start time for every source: they stay in sync
    this.sources = this.tracks.map((t) => {
      const source = this.context.createBufferSource();
      source.buffer = t.buffer;
      source.connect(t.gain);
      source.start(when, Math.min(this.offset, t.buffer.duration));
      return source;
    });
    this.startedAt = when;
    this.playing = true;
    $("#play").textContent = "Pause";
    this.tick();
  },

  pause() {
    if (!this.playing) return;
    this.offset = this.time();
    this.stopSources();
    $("#play").textContent = "Play";
  },

  stopSources() {
    for (const s of this.sources) { try { s.stop(); } catch (e) { /* already stopped */ } s.disconnect(); }
    this.sources = [];
    this.playing = false;
    cancelAnimationFrame(this.frame);
  },

  seek(seconds) {
    const wasPlaying = this.playing;
    if (wasPlaying) this.stopSources();
    this.offset = Math.max(0, Math.min(this.duration, seconds));
    if (wasPlaying) this.play(); else this.showTime();
  },

  tick() {
    this.showTime();
    if (this.playing && this.time() >= this.duration) {
      this.stopSources();
      this.offset = this.duration;
      $("#play").textContent = "Play";
      this.showTime();
      return;
    }
    if (this.playing) this.frame = requestAnimationFrame(() => this.tick());
  },

  showTime() {
    const t = this.time();
    $("#time").textContent = `${clock(t)} / ${clock(this.duration)}`;
    if (!seeking) $("#seek").value = this.duration ? Math.round((1000 * t) / this.duration) : 0;
    this.drawAll();
  },

  drawAll() {
    for (const t of this.tracks) drawWave(t, this.duration ? this.time() / this.duration : 0);
  },

  reset() {
    this.stopSources();
    for (const t of this.tracks) t.gain.disconnect();
    this.tracks = [];
    this.offset = 0;
    this.duration = 0;
    this.compare = false;
  },
};
let seeking = false;
window.umxPlayer = player;  // for scripts and the browser test: tracks[i].gain is each stem's GainNode

function peaks(buffer, width) {
  const out = new Float32Array(width * 2);
  const channels = [...Array(buffer.numberOfChannels).keys()].map((c) => buffer.getChannelData(c));
  const step = Math.max(1, Math.floor(buffer.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 0, hi = 0;
    const end = Math.min(buffer.length, (x + 1) * step);
    for (let i = x * step; i < end; i++) {
      let v = 0;
      for (const data of channels) v += data[i];
      v /= channels.length;
      if (v < lo) lo = v; else if (v > hi) hi = v;
    }
    out[2 * x] = lo; out[2 * x + 1] = hi;
  }
  return out;
}

function drawWave(track, position) {
  const canvas = track.canvas;
  const width = canvas.clientWidth || 600;
  if (canvas.width !== width) { canvas.width = width; track.peaks = null; }
  if (!track.peaks) track.peaks = peaks(track.buffer, width);
  const g = canvas.getContext("2d"), h = canvas.height, mid = h / 2;
  const css = getComputedStyle(document.documentElement);
  g.clearRect(0, 0, width, h);
  g.fillStyle = css.getPropertyValue("--played");
  g.fillRect(0, 0, position * width, h);
  g.fillStyle = track.gain.gain.value > 0 ? css.getPropertyValue("--wave") : css.getPropertyValue("--wave-off");
  for (let x = 0; x < width; x++) {
    const lo = track.peaks[2 * x], hi = track.peaks[2 * x + 1];
    g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
  g.fillStyle = "#1d2430";
  g.fillRect(Math.round(position * width), 0, 1, h);
}

function addTrack(name, buffer, { mixture = false, href = null } = {}) {
  const row = $("#track-template").content.firstElementChild.cloneNode(true);
  row.dataset.stem = name;
  row.classList.toggle("mixture", mixture);
  $(".name", row).textContent = name;
  const gain = player.context.createGain();
  gain.connect(player.context.destination);
  const track = { name, buffer, gain, row, canvas: $(".wave", row), mute: false, solo: false, volume: 1, mixture };
  const download = $(".download", row);
  if (href) download.href = href; else download.remove();
  if (mixture) $(".solo", row).remove();
  $(".mute", row).addEventListener("click", (e) => {
    track.mute = !track.mute;
    e.currentTarget.setAttribute("aria-pressed", String(track.mute));
    player.applyGains();
  });
  const solo = $(".solo", row);
  if (solo) solo.addEventListener("click", (e) => {
    track.solo = !track.solo;
    e.currentTarget.setAttribute("aria-pressed", String(track.solo));
    player.applyGains();
  });
  $(".volume", row).addEventListener("input", (e) => { track.volume = Number(e.target.value); player.applyGains(); });
  track.canvas.addEventListener("click", (e) => {
    const box = track.canvas.getBoundingClientRect();
    player.seek(((e.clientX - box.left) / box.width) * player.duration);
  });
  $("#tracks").append(row);
  player.tracks.push(track);
  return track;
}

async function fetchBuffer(url) {
  const data = await (await api(url)).arrayBuffer();
  return player.context.decodeAudioData(data);
}

async function openJob(id) {
  const job = state.jobs.get(id);
  if (!job || job.status !== "done") return;
  player.reset();
  state.selected = id;
  document.querySelectorAll(".job.selected").forEach((r) => r.classList.remove("selected"));
  const row = document.getElementById(`job-${id}`);
  if (row) row.classList.add("selected");
  if (!player.context) player.context = new AudioContext();
  $("#player").hidden = false;
  $("#player-title").textContent = job.filename;
  $("#tracks").innerHTML = "";
  $("#play").disabled = $("#seek").disabled = $("#compare").disabled = true;
  $("#zip").href = `/api/jobs/${id}/zip`;
  $("#player-status").textContent = "Loading stems...";
  try {
    const urls = job.stems.map((s) => `/api/jobs/${id}/stems/${encodeURIComponent(s)}`);
    const buffers = await Promise.all(urls.map(fetchBuffer));
    if (state.selected !== id) return;
    job.stems.forEach((name, k) => addTrack(name, buffers[k], { href: urls[k] }));
    player.duration = Math.max(...buffers.map((b) => b.duration));
    $("#player-status").textContent = `${job.stems.length} stems, ${clock(player.duration)}`;
  } catch (e) {
    $("#player-status").textContent = `Cannot load the stems: ${e.message}`;
    return;
  }
  $("#play").disabled = $("#seek").disabled = false;
  player.applyGains();
  player.showTime();
  $("#player").dataset.ready = "true";
  try {  // the upload itself: the browser may not decode every format the server does
    const mixture = await fetchBuffer(`/api/jobs/${id}/mixture`);
    if (state.selected !== id) return;
    addTrack("mixture", mixture, { mixture: true });
    $("#compare").disabled = false;
    player.applyGains();
  } catch (e) {
    $("#compare").title = "This browser cannot decode the original file";
  }
}

function closePlayer() {
  player.reset();
  state.selected = null;
  $("#player").hidden = true;
  delete $("#player").dataset.ready;
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { submit([...e.target.files]); e.target.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("#files").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); submit([...e.dataTransfer.files]); });
  $("#model").addEventListener("change", renderTargets);
  $("#two-stems").addEventListener("change", () => { $("#targets").disabled = $("#two-stems").checked; });
  $("#play").addEventListener("click", async () => {
    await player.context.resume();
    if (player.playing) player.pause(); else player.play();
  });
  const seek = $("#seek");
  seek.addEventListener("input", () => { seeking = true; $("#time").textContent =
    `${clock((seek.value / 1000) * player.duration)} / ${clock(player.duration)}`; });
  seek.addEventListener("change", () => { seeking = false; player.seek((seek.value / 1000) * player.duration); });
  $("#compare").addEventListener("click", (e) => {
    player.compare = !player.compare;
    e.currentTarget.setAttribute("aria-pressed", String(player.compare));
    player.applyGains();
  });
  window.addEventListener("resize", () => player.drawAll());
}

wire();
loadOptions().catch((e) => { $("#submit-error").textContent = `Cannot reach the server: ${e.message}`;
                             $("#submit-error").hidden = false; });
listen();
