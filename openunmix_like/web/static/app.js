// umx-web page: uploads, the job queue (live through server-sent events) and the stem player (Web Audio).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
// opened: counts the player's openings and closings; a stems' load that a later one overtook drops its result.
const state = { models: [], jobs: new Map(), selected: null, opened: 0 };
const FINISHED = ["done", "failed", "cancelled"];
// What the page shows of a running job's `phase` (GET /api/jobs/{id}).
const PHASES = { loading: "loading model", separating: "separating", writing: "writing stems" };

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

const UNREACHABLE = "cannot reach the umx-web server (stopped?); start it again, then retry";

// The error of a refused request: the server's `detail` (a line, or for some errors a structure), else `fallback`.
function refusal(body, fallback) {
  const detail = (body && body.detail) || fallback;
  return new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {  // no answer at all: the browser's own words ("Failed to fetch") say nothing to a musician
    throw new Error(UNREACHABLE);
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    throw refusal(body, response.statusText);
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
    form.append("targets", chosen.join(","));
  }
  return form;
}

// ------------------------------------------------------------------ uploads
//
// XMLHttpRequest rather than fetch: only it reports how much of a request's body has been sent, and a
// 100 MB song over Wi-Fi takes a minute. One upload at a time: the server queues the jobs anyway, the
// browser's memory stays small, and the one under way gets all the bandwidth. Files added meanwhile wait.

class UploadCancelled extends Error {}

const uploads = { waiting: [], current: null, problems: [] };

function megabytes(bytes) {
  return (bytes / 2 ** 20).toFixed(1);  // MB as the server counts them (--max-upload-mb)
}

// POST one form; `done` resolves to the server's answer ({id}), or rejects with the reason (UploadCancelled
// after `cancel`).
function sendForm(form, onProgress, onSent) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    xhr.upload.addEventListener("load", onSent);
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body && body.id) resolve(body);
      else reject(refusal(body, xhr.statusText || `HTTP ${xhr.status}`));
    });
    xhr.addEventListener("error", () => reject(new Error(UNREACHABLE)));
    xhr.addEventListener("abort", () => reject(new UploadCancelled()));
  });
  xhr.open("POST", "/api/jobs");
  xhr.send(form);
  return { done, cancel: () => xhr.abort() };
}

function showProblems() {
  const error = $("#submit-error");
  error.textContent = uploads.problems.join("\n");
  error.hidden = !uploads.problems.length;
}

// The line under the drop zone: the file, how much of it is sent, and Cancel (until all of it is sent).
function showUpload(file, loaded, total) {
  const box = $("#upload");
  box.hidden = false;
  const waiting = uploads.waiting.length ? ` (${uploads.waiting.length} more waiting)` : "";
  $(".name", box).textContent = `Uploading ${file.name}${waiting}`;
  $(".name", box).title = file.name;
  const percent = total ? Math.floor((100 * loaded) / total) : 0;  // 100 only once all is sent
  $("progress", box).value = percent;
  $("progress", box).setAttribute("aria-label", `Upload of ${file.name}`);
  $(".sent", box).textContent = `${percent} %, ${megabytes(loaded)} of ${megabytes(total || file.size)} MB`;
  $(".cancel", box).setAttribute("aria-label", `Cancel upload of ${file.name}`);
}

// Whether the keyboard is on `element` (or in it): Tab or a key got it there, not a mouse click.
function keyboardIn(element) {
  const focus = document.activeElement;
  return Boolean(focus && element.contains(focus) && focus.matches(":focus-visible"));
}

function hideUpload() {
  const box = $("#upload");
  const hadFocus = keyboardIn(box);
  box.hidden = true;
  if (hadFocus) $("#drop").focus();  // rather than the top of the page
}

// Each file becomes a job with the options chosen now (also when it waits for an earlier upload).
function submit(files) {
  if (!uploads.current && !uploads.waiting.length) {  // a new batch: the last one's lines have been read
    uploads.problems = [];
    showProblems();
  }
  if (!$("#two-stems").checked && !$("#targets").querySelector("input:checked")) {
    uploads.problems = ["Choose at least one target (or Two stems), then add the files again."];
    showProblems();
    return;
  }
  for (const file of files) uploads.waiting.push({ file, form: formFor(file) });
  if (!uploads.current) uploadWaiting();
}

async function uploadWaiting() {
  while (uploads.waiting.length) {
    const { file, form } = uploads.waiting.shift();
    showUpload(file, 0, 0);
    $("#upload .cancel").disabled = false;
    uploads.current = sendForm(form, (loaded, total) => showUpload(file, loaded, total), () => {
      // All sent: the server is storing it, and a cancel could no longer be sure to stop the job.
      const cancel = $("#upload .cancel");
      if (keyboardIn(cancel)) $("#drop").focus();  // a disabled button loses it anyway
      cancel.disabled = true;
      $("#upload .sent").textContent += ", storing";
    });
    try {
      const { id } = await uploads.current.done;
      const known = state.jobs.get(id);
      if (!known) {
        upsertJob({ id, status: "queued", progress: 0, stems: [], error: null, filename: file.name,
                    created: Date.now() / 1000 });
      } else if (FINISHED.includes(known.status)) {
        announce(known);  // finished before this page knew it was its own: not announced yet
      }
    } catch (e) {
      uploads.problems.push(e instanceof UploadCancelled
        ? `${file.name}: upload cancelled; nothing of it was kept`
        : `${file.name}: ${e.message}`);
      showProblems();
    }
  }
  uploads.current = null;
  hideUpload();
}

// ------------------------------------------------------------------ jobs

// Say in the polite live region that a job finished, failed or was cancelled: one line per change (a new
// line is read out; the region keeps the last few).
function announce(job) {
  const error = (job.error || "").replace(`${job.filename}: `, "");
  const text = { done: `${job.filename}: done, ${job.stems.length} stems ready`,
                 failed: `${job.filename}: failed${error ? `: ${error}` : ""}`,
                 cancelled: `${job.filename}: cancelled` }[job.status];
  const region = $("#announcements");
  region.append(Object.assign(document.createElement("p"), { textContent: text }));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

function upsertJob(job) {
  const before = state.jobs.get(job.id);
  if (before && before.status !== job.status && FINISHED.includes(job.status)) announce(job);
  state.jobs.set(job.id, job);
  let row = document.getElementById(`job-${job.id}`);
  if (!row) {
    row = $("#job-template").content.firstElementChild.cloneNode(true);
    row.id = `job-${job.id}`;
    $(".open", row).addEventListener("click", () => openJob(job.id));
    $(".cancel", row).addEventListener("click", () => api(`/api/jobs/${job.id}`, { method: "DELETE" })
      .catch((e) => { $(".error", row).textContent = `Cannot cancel: ${e.message}`; }));
    $(".delete", row).addEventListener("click", () => deleteJob(job.id)
      .catch((e) => { $(".error", row).textContent = `Cannot delete: ${e.message}`; }));
    $("#jobs").prepend(row);
  }
  row.dataset.status = job.status;
  $(".name", row).textContent = job.filename;
  $(".name", row).title = job.filename;
  // Every row has an Open, a Cancel and a Delete button: a screen reader names the song with each.
  for (const [action, verb] of [["open", "Open"], ["cancel", "Cancel"], ["delete", "Delete"]]) {
    $(`.${action}`, row).setAttribute("aria-label", `${verb} ${job.filename}`);
  }
  $("progress", row).setAttribute("aria-label", `Progress of ${job.filename}`);
  const running = job.status === "running";
  // A running job's phase (an older server sends none: then the percentage alone); separating has a percentage.
  const phase = running && PHASES[job.phase] ? job.phase : null;
  $(".phase", row).textContent = phase ? PHASES[phase] : "";
  $(".status", row).textContent = !running ? job.status
    : !phase || phase === "separating" ? `${Math.round(job.progress * 100)} %` : "";
  // Loading the model and writing the stems take a while with no fraction to show: the bar moves by itself.
  if (phase === "loading" || phase === "writing") $("progress", row).removeAttribute("value");
  else $("progress", row).value = job.progress;
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
  if (row) {
    // Focus in the row (Delete pressed with the keyboard) goes to the next job, not to the top of the page.
    const hadFocus = row.contains(document.activeElement);
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    if (hadFocus) focusJob(next);
  }
  if (state.selected === id) closePlayer();
  $("#no-jobs").hidden = state.jobs.size > 0;
}

// The first button `row` shows (Open for a finished job), or the drop zone when there is no row.
function focusJob(row) {
  const button = row && [...row.querySelectorAll(".actions button")].find((b) => !b.hidden);
  (button || $("#drop")).focus();
}

async function deleteJob(id) {
  await api(`/api/jobs/${id}`, { method: "DELETE" });
  removeJob(id);
}

// The live updates are also how the page knows the server is there: while they are cut off, it says so
// (the jobs shown may be out of date), and once they are back it drops the jobs the server no longer has
// (a restart with another --jobs-dir, jobs deleted meanwhile) and loads the options if they never came.
function listen(lost = false) {
  const events = new EventSource("/api/events");
  events.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    const before = state.jobs.get(job.id);
    upsertJob(job);
    // Open the first finished job by itself, so a single drop ends in the player.
    if (job.status === "done" && before && before.status !== "done" && !state.selected) openJob(job.id);
  });
  events.addEventListener("removed", (e) => removeJob(JSON.parse(e.data).id));
  events.addEventListener("open", () => {
    $("#offline").hidden = true;
    if (lost) resync();
    lost = false;
  });
  events.addEventListener("error", () => {
    lost = true;
    $("#offline").hidden = false;
    // The browser retries by itself after a dropped connection, but gives up on an answer that is not an
    // event stream (a proxy's error page, say): start again then.
    if (events.readyState === EventSource.CLOSED) setTimeout(() => listen(true), 2000);
  });
}

async function resync() {
  try {
    if (!state.models.length) {  // the page was opened while the server was away
      await loadOptions();
      $("#submit-error").hidden = true;  // "Cannot load the models" no longer holds
    }
    const present = new Set((await (await api("/api/jobs")).json()).map((j) => j.id));
    for (const id of [...state.jobs.keys()]) if (!present.has(id)) removeJob(id);
  } catch (e) { /* cut off again: the next reconnection tries again */ }
}

// ------------------------------------------------------------------ player
//
// The player streams: it holds the few seconds of each track around the play head (CHUNK_SECONDS
// at a time, fetched as 16-bit PCM from /api/jobs/{id}/preview/{track}), whatever the song's length,
// and draws the waveforms from the peaks the server computed. Every track is at the rate of the
// AudioContext, so chunks follow one another sample for sample on the context's clock.

const CHUNK_SECONDS = 10;
const MAX_REQUEST_FRAMES = 4194304;  // the most frames one PCM request may ask for (5.9 s at 705.6 kHz)
const LOOKAHEAD_S = 4;      // chunks are scheduled this far ahead of the play head
const KEEP_BEHIND = 1;      // chunks kept behind the play head's (for a short seek back)
const MIN_LOOP_S = 0.25;    // a shorter drag on a waveform is a click (a seek)

const player = {
  context: null, job: null, rate: 0, channels: 0, chunkFrames: 0, frames: 0, tracks: [], duration: 0,
  playing: false, waiting: false, offset: 0, compare: false, loop: null, looping: false, marking: null,
  sources: [], passes: [], nextChunk: 0, timer: 0, frame: 0, chunks: new Map(), generation: 0,

  // Playback is a series of passes, each frames [from, to) of the song starting at context time `when`:
  // one pass to the end, or with a loop, the rest of the loop and then the loop again and again.
  time() {
    if (!this.playing) return this.offset;
    const now = this.context.currentTime;
    const pass = [...this.passes].reverse().find((p) => p.when <= now) || this.passes[0];
    const frame = Math.min(pass.to, pass.from + Math.max(0, now - pass.when) * this.rate);
    return Math.min(this.duration, frame / this.rate);
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

  // Chunk k of every track, fetched once: a promise of [AudioBuffer or null (past a track's end)].
  chunk(k) {
    if (!this.chunks.has(k)) {
      const job = this.job, start = k * this.chunkFrames;
      const loading = Promise.all(this.tracks.map((t) => fetchPcm(job, t, start, this.chunkFrames)));
      const entry = { promise: loading, buffers: null }, chunks = this.chunks;
      // A failed fetch is tried again when next asked for (unless the chunk was evicted, or the job closed).
      loading.then((buffers) => { entry.buffers = buffers; }, () => { if (chunks.get(k) === entry) chunks.delete(k); });
      chunks.set(k, entry);
    }
    return this.chunks.get(k);
  },

  // Forget chunks far from the play head (a short loop's are kept): memory stays that of a few chunks.
  evict(current) {
    const ahead = Math.ceil((LOOKAHEAD_S * this.rate) / this.chunkFrames) + 1;
    const loop = this.looping && this.loop ? [Math.floor(this.loop.a / this.chunkFrames),
                                               Math.floor((this.loop.b - 1) / this.chunkFrames)] : null;
    for (const k of [...this.chunks.keys()]) {
      const near = k >= current - KEEP_BEHIND && k <= current + ahead;
      const looped = loop && loop[1] - loop[0] <= ahead && k >= loop[0] && k <= loop[1];
      if (!near && !looped) this.chunks.delete(k);
    }
  },

  // The loop, as frames [a, b), when it is on and holds the frame `at`.
  activeLoop(at) {
    return this.looping && this.loop && at >= this.loop.a && at < this.loop.b ? this.loop : null;
  },

  async play() {
    if (this.playing || this.waiting || !this.tracks.length) return;
    if (this.offset >= this.duration) this.offset = 0;
    let startFrame = Math.min(this.frames, Math.round(this.offset * this.rate));
    if (this.looping && this.loop && !this.activeLoop(startFrame)) startFrame = this.loop.a;  // into the loop
    const generation = ++this.generation;
    const first = Math.floor(startFrame / this.chunkFrames);
    this.waiting = true;
    $("#play").textContent = "Pause";
    try {
      await this.chunk(first).promise;
    } catch (e) {
      if (generation !== this.generation) return;  // paused, seeked or closed meanwhile
      this.waiting = false;
      $("#play").textContent = "Play";
      $("#player-status").textContent = `Cannot load the audio: ${e.message}`;
      return;
    }
    if (generation !== this.generation) return;  // paused or seeked meanwhile
    this.waiting = false;
    $("#player-status").textContent = this.summary;  // after "Loading..." or an earlier failure
    this.offset = startFrame / this.rate;
    // One start time for every source, so they stay in sync, on a frame of the context's clock: a start
    // between two frames would be interpolated, and the stems would no longer be the files' samples.
    const when = Math.round((this.context.currentTime + 0.05) * this.rate) / this.rate;
    const loop = this.activeLoop(startFrame);
    this.passes = [{ from: startFrame, to: loop ? loop.b : this.frames, when }];
    this.nextChunk = first;
    this.playing = true;
    this.schedule();
    this.timer = setInterval(() => this.schedule(), 100);
    this.tick();
  },

  chunkCount() { return Math.ceil(this.frames / this.chunkFrames); },

  // When frame f of `pass` sounds on the context's clock (from the pass's start: no rounding adds up).
  frameTime(pass, f) { return pass.when + (f - pass.from) / this.rate; },

  // Start the sources of every loaded chunk due within LOOKAHEAD_S; ask for the ones after.
  schedule() {
    if (!this.playing) return;
    const now = this.context.currentTime, C = this.chunkFrames;
    for (;;) {
      let pass = this.passes[this.passes.length - 1];
      if (this.nextChunk * C >= pass.to) {  // this pass is scheduled to its end
        const loop = this.activeLoop(pass.from);
        if (!loop || pass.to !== loop.b) break;  // the song's end
        pass = { from: loop.a, to: loop.b, when: this.frameTime(pass, pass.to) };
        this.passes.push(pass);
        this.nextChunk = Math.floor(loop.a / C);
      }
      const k = this.nextChunk, begin = Math.max(pass.from, k * C), end = Math.min(pass.to, (k + 1) * C);
      if (this.frameTime(pass, begin) >= now + LOOKAHEAD_S) break;
      const entry = this.chunk(k);
      if (!entry.buffers) {
        if (this.frameTime(pass, begin) < now + 0.02) this.stall(begin);  // due now and still not here
        return;
      }
      entry.buffers.forEach((buffer, i) => {
        const skip = begin - k * C, length = Math.min(end, k * C + (buffer ? buffer.length : 0)) - begin;
        if (length <= 0) return;  // past this track's end
        const source = this.context.createBufferSource();
        source.buffer = buffer;
        source.connect(this.tracks[i].gain);
        source.start(this.frameTime(pass, begin), skip / this.rate, length / this.rate);
        source.onended = () => { this.sources = this.sources.filter((s) => s !== source); };
        this.sources.push(source);
      });
      this.nextChunk = k + 1;
      if (end === (k + 1) * C && k + 1 < this.chunkCount()) this.chunk(k + 1);
    }
    this.passes = this.passes.filter((p, i) => i === this.passes.length - 1 || this.frameTime(p, p.to) > now);
    this.evict(Math.floor((this.time() * this.rate) / C));
  },

  // The network fell behind: stop where the audio ends and carry on once the next chunk is here.
  stall(frame) {
    this.stopSources();
    this.offset = frame / this.rate;
    $("#player-status").textContent = "Loading...";
    this.play();  // which says why, when the chunk cannot be loaded
  },

  // Loop seconds a to b (either order; a span under MIN_LOOP_S clears the loop) and start looping: the
  // play head goes to the loop's start. The loop repeats sample for sample, its end followed by its start.
  setLoop(a, b) {
    const from = Math.max(0, Math.round(Math.min(a, b) * this.rate));
    const to = Math.min(this.frames, Math.round(Math.max(a, b) * this.rate));
    this.loop = to - from >= MIN_LOOP_S * this.rate ? { a: from, b: to } : null;
    this.looping = Boolean(this.loop);
    $("#loop").disabled = !this.loop;
    $("#loop").setAttribute("aria-pressed", String(this.looping));
    this.seek(this.loop ? this.loop.a / this.rate : this.time());
  },

  // Looping on (from the loop's start, unless the play head is in it) or off (playing goes on).
  toggleLoop() {
    if (!this.loop) return;
    const at = this.time();
    this.looping = !this.looping;
    $("#loop").setAttribute("aria-pressed", String(this.looping));
    this.seek(this.looping && !this.activeLoop(Math.round(at * this.rate)) ? this.loop.a / this.rate : at);
  },

  pause() {
    if (this.waiting) { this.generation++; this.waiting = false; $("#play").textContent = "Play"; return; }
    if (!this.playing) return;
    this.offset = this.time();
    this.stopSources();
    $("#play").textContent = "Play";
  },

  stopSources() {
    for (const s of this.sources) { try { s.stop(); } catch (e) { /* already stopped */ } s.disconnect(); }
    this.sources = [];
    this.passes = [];
    this.playing = false;
    clearInterval(this.timer);
    cancelAnimationFrame(this.frame);
  },

  // A seek outside the loop turns looping off (the loop stays, for the Loop button to turn on again).
  // A seek to the end (or past it) while playing stops there, as playing to the end does.
  seek(seconds) {
    const wasPlaying = this.playing || this.waiting;
    this.generation++;
    this.waiting = false;
    if (this.playing) this.stopSources();
    this.offset = Math.max(0, Math.min(this.duration, seconds));
    if (this.looping && !this.activeLoop(Math.round(this.offset * this.rate))) {
      this.looping = false;
      $("#loop").setAttribute("aria-pressed", "false");
    }
    if (wasPlaying && this.offset < this.duration) {
      this.play();
    } else {
      $("#play").textContent = "Play";
      this.showTime();
    }
  },

  tick() {
    this.showTime();
    if (this.playing && !this.looping && this.time() >= this.duration) {
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
    $("#seek").setAttribute("aria-valuetext", `${clock(t)} of ${clock(this.duration)}`);
    this.drawAll();
  },

  drawAll() {
    for (const t of this.tracks) drawWave(t, this.duration ? this.time() / this.duration : 0);
  },

  reset() {
    this.generation++;
    this.waiting = false;
    this.stopSources();
    for (const t of this.tracks) t.gain.disconnect();
    this.tracks = [];
    this.chunks = new Map();
    this.offset = 0;
    this.duration = 0;
    this.compare = false;
    $("#compare").setAttribute("aria-pressed", "false");
    this.loop = null;
    this.looping = false;
    $("#loop").disabled = true;
    $("#loop").setAttribute("aria-pressed", "false");
  },
};
let seeking = false;
window.umxPlayer = player;  // for scripts and the browser test: tracks[i].gain is each stem's GainNode

// Frames [start, start + frames) of a track as an AudioBuffer at the context's rate; null past its end.
async function fetchPcm(job, track, start, frames) {
  const url = `/api/jobs/${job}/preview/${encodeURIComponent(track.name)}?start=${start}&frames=${frames}`;
  const pcm = new Int16Array(await (await api(url)).arrayBuffer());
  const channels = player.channels, length = pcm.length / channels;
  if (!length) return null;
  const buffer = player.context.createBuffer(channels, length, player.rate);
  for (let c = 0; c < channels; c++) {
    const data = new Float32Array(length);
    for (let i = 0; i < length; i++) data[i] = pcm[i * channels + c] / 32768;
    buffer.copyToChannel(data, c);
  }
  return buffer;
}

function drawWave(track, position) {
  const canvas = track.canvas;
  const width = canvas.clientWidth || 600;
  if (canvas.width !== width) canvas.width = width;
  const g = canvas.getContext("2d"), h = canvas.height, mid = h / 2;
  const css = getComputedStyle(document.documentElement);
  g.clearRect(0, 0, width, h);
  g.fillStyle = css.getPropertyValue("--played");
  g.fillRect(0, 0, position * width, h);
  const marked = player.marking || (player.loop && [player.loop.a / player.rate, player.loop.b / player.rate]);
  if (marked && player.duration) {  // the loop (or the one being marked)
    const [x0, x1] = [Math.min(...marked), Math.max(...marked)].map((t) => (t / player.duration) * width);
    g.fillStyle = css.getPropertyValue(player.looping || player.marking ? "--loop" : "--loop-off");
    g.fillRect(x0, 0, Math.max(1, x1 - x0), h);
  }
  g.fillStyle = track.gain.gain.value > 0 ? css.getPropertyValue("--wave") : css.getPropertyValue("--wave-off");
  // The server's peaks span the track's length; a track shorter than the longest is drawn shorter.
  const buckets = track.peaks.length / 2, span = (width * track.frames) / Math.max(1, player.frames);
  for (let x = 0; x < Math.ceil(span); x++) {
    const from = Math.floor((x * buckets) / span), to = Math.max(from + 1, Math.floor(((x + 1) * buckets) / span));
    let lo = 0, hi = 0;
    for (let b = from; b < Math.min(to, buckets); b++) {
      lo = Math.min(lo, track.peaks[2 * b]);
      hi = Math.max(hi, track.peaks[2 * b + 1]);
    }
    g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
  g.fillStyle = "#1d2430";
  g.fillRect(Math.round(position * width), 0, 1, h);
}

function addTrack(info, href) {
  const row = $("#track-template").content.firstElementChild.cloneNode(true);
  const mixture = info.mixture;
  row.dataset.stem = info.name;
  row.classList.toggle("mixture", mixture);
  $(".name", row).textContent = info.name;
  const gain = player.context.createGain();
  gain.connect(player.context.destination);
  const track = { name: info.name, frames: info.frames, peaks: info.peaks, gain, row, canvas: $(".wave", row),
                  mute: false, solo: false, volume: 1, mixture };
  const download = $(".download", row);
  if (href) download.href = href; else download.remove();
  if (href) download.setAttribute("aria-label", `Download ${info.name}`);
  if (mixture) $(".solo", row).remove();
  // Each track's controls look alike (M, S, a slider): a screen reader names the track with each.
  $(".mute", row).setAttribute("aria-label", `Mute ${info.name}`);
  if (!mixture) $(".solo", row).setAttribute("aria-label", `Solo ${info.name}`);
  $(".volume", row).setAttribute("aria-label", `Volume of ${info.name}`);
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
  // A click seeks; a drag across the waveform marks a loop and starts looping it.
  const canvas = track.canvas;
  const at = (e) => {
    const box = canvas.getBoundingClientRect();
    return Math.max(0, Math.min(1, (e.clientX - box.left) / box.width)) * player.duration;
  };
  canvas.addEventListener("pointerdown", (e) => {
    const x0 = e.clientX, t0 = at(e);
    canvas.setPointerCapture(e.pointerId);
    const move = (m) => {
      player.marking = Math.abs(m.clientX - x0) > 4 ? [t0, at(m)] : null;
      player.drawAll();
    };
    const up = (u) => {
      canvas.removeEventListener("pointermove", move);
      player.marking = null;
      if (Math.abs(u.clientX - x0) > 4) player.setLoop(t0, at(u)); else player.seek(t0);
    };
    const cancel = () => {
      canvas.removeEventListener("pointermove", move);
      canvas.removeEventListener("pointerup", up);
      player.marking = null;
      player.drawAll();
    };
    canvas.addEventListener("pointermove", move);
    canvas.addEventListener("pointerup", up, { once: true });
    canvas.addEventListener("pointercancel", cancel, { once: true });
  });
  $("#tracks").append(row);
  player.tracks.push(track);
  return track;
}

async function openJob(id) {
  const job = state.jobs.get(id);
  if (!job || job.status !== "done") return;
  player.reset();
  state.selected = id;
  const opening = ++state.opened;  // opened again or closed meanwhile (two clicks, the page's own opening): that wins
  document.querySelectorAll(".job.selected").forEach((r) => r.classList.remove("selected"));
  const row = document.getElementById(`job-${id}`);
  if (row) row.classList.add("selected");
  $("#player").hidden = false;
  delete $("#player").dataset.ready;
  $("#player-title").textContent = job.filename;
  $("#tracks").innerHTML = "";
  $("#play").disabled = $("#seek").disabled = $("#compare").disabled = true;
  $("#compare").title = "Hear the original mixture instead of the stems";
  $("#zip").href = `/api/jobs/${id}/zip`;
  $("#player-status").textContent = "Loading stems...";
  let info;
  try {
    info = await (await api(`/api/jobs/${id}/preview`)).json();
  } catch (e) {
    if (state.opened === opening) {
      $("#player-status").textContent = `Cannot load the stems: ${e.message}`;
    }
    return;
  }
  if (state.opened !== opening) return;
  // One context at the tracks' rate: chunks then follow one another sample for sample.
  if (!player.context || player.context.sampleRate !== info.rate) {
    if (player.context) player.context.close();
    try {
      player.context = new AudioContext({ sampleRate: info.rate });
    } catch (e) {  // a rate this browser's audio cannot run at: it resamples each chunk instead
      player.context = new AudioContext();
    }
  }
  Object.assign(player, { job: id, rate: info.rate, channels: info.channels,
                          chunkFrames: Math.min(Math.round(CHUNK_SECONDS * info.rate), MAX_REQUEST_FRAMES) });
  for (const track of info.tracks) {
    addTrack(track, track.mixture ? null : `/api/jobs/${id}/stems/${encodeURIComponent(track.name)}`);
  }
  const stems = info.tracks.filter((t) => !t.mixture);
  player.frames = Math.max(...stems.map((t) => t.frames));  // the upload may end a few frames later
  player.duration = player.frames / info.rate;
  player.summary = `${stems.length} stems, ${clock(player.duration)}`;
  $("#player-status").textContent = player.summary;
  if (info.tracks.some((t) => t.mixture)) $("#compare").disabled = false;
  else $("#compare").title = `No original mixture to compare with: ${info.mixture_error}`;
  $("#play").disabled = $("#seek").disabled = false;
  player.applyGains();
  player.showTime();
  $("#player").dataset.ready = "true";
  player.chunk(0);  // the start, ready before Play
}

function closePlayer() {
  player.reset();
  state.selected = null;
  state.opened++;  // a load still under way is not shown
  $("#player").hidden = true;
  delete $("#player").dataset.ready;
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { submit([...e.target.files]); e.target.value = ""; });
  drop.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" && e.key !== " ") return;
    e.preventDefault();  // Space would also scroll the page
    $("#files").click();
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  // Files dropped anywhere on the page are taken: dropped beside the drop zone, the browser would open the
  // file in place of this page instead.
  const files = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragover", (e) => { if (files(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    if (!files(e)) return;
    e.preventDefault();
    submit([...e.dataTransfer.files]);
  });
  $("#upload .cancel").addEventListener("click", () => { if (uploads.current) uploads.current.cancel(); });
  $("#model").addEventListener("change", renderTargets);
  $("#two-stems").addEventListener("change", () => { $("#targets").disabled = $("#two-stems").checked; });
  $("#play").addEventListener("click", async () => {
    await player.context.resume();
    if (player.playing || player.waiting) player.pause(); else player.play();
  });
  const seek = $("#seek");
  seek.addEventListener("input", () => { seeking = true; $("#time").textContent =
    `${clock((seek.value / 1000) * player.duration)} / ${clock(player.duration)}`; });
  seek.addEventListener("change", () => { seeking = false; player.seek((seek.value / 1000) * player.duration); });
  $("#loop").addEventListener("click", () => player.toggleLoop());
  $("#compare").addEventListener("click", (e) => {
    player.compare = !player.compare;
    e.currentTarget.setAttribute("aria-pressed", String(player.compare));
    player.applyGains();
  });
  window.addEventListener("resize", () => player.drawAll());
  // A button, link or slider used with the mouse gives the keyboard back to the player's keys (Space then
  // plays or pauses instead of pressing that button again, the arrows move the play head); one reached
  // with Tab keeps it, with its own keys.
  let byPointer = false;
  document.addEventListener("pointerdown", () => { byPointer = true; }, true);
  document.addEventListener("keydown", () => { byPointer = false; }, true);
  for (const type of ["click", "change"]) {
    document.addEventListener(type, (e) => {
      const control = e.target.closest && e.target.closest("button, a, #drop, input[type='range']");
      if (byPointer && control) control.blur();
    });
  }
  // Space plays or pauses, the arrow keys move 5 s, Home goes to the start: unless a control has the
  // keyboard (typing in a field, a focused button or slider keeps its own keys).
  document.addEventListener("keydown", (e) => {
    if ($("#player").hidden || $("#play").disabled || e.ctrlKey || e.metaKey || e.altKey) return;
    const focus = document.activeElement;
    if (focus && focus !== document.body && focus.matches("input, select, textarea, button, a, [tabindex]")) return;
    if (e.key === " ") $("#play").click();
    else if (e.key === "ArrowLeft") player.seek(player.time() - 5);
    else if (e.key === "ArrowRight") player.seek(player.time() + 5);
    else if (e.key === "Home") player.seek(0);
    else if (e.key === "l" || e.key === "L") player.toggleLoop();
    else return;
    e.preventDefault();
  });
}

wire();
loadOptions().catch((e) => { $("#submit-error").textContent = `Cannot load the models: ${e.message}`;
                             $("#submit-error").hidden = false; });
listen();
