// Live mode: a camera (getUserMedia) or a shared tab (getDisplayMedia) sampled a few
// times a second, scaled down, sent as JPEG over the WebSocket /api/live; each answer's
// face boxes are drawn over the video, the running verdict shown, a chart per person.
// Plain JavaScript, no build step, nothing fetched beyond this gateway.
"use strict";

const MAX_WAITING = 2; // frames sent and not yet answered: beyond, skip (no queue here)
const CHART_POINTS = 90; // per person
const PALETTE = ["#0b63b6", "#b35c00", "#7b3fa0", "#00786f", "#a8326a", "#4d6b00"];
// A live frame without a face is not a file without one: nobody is in view right now.
const LIVE_VERDICT_WORDS = { ...VERDICT_WORDS, no_face: "No face in view" };
const CLOSE_WORDS = {
  4401: "An API key is needed, or the one given was refused.",
  4408: "Closed after a while without frames.",
  4429: "Too many live sessions right now; try again shortly.",
  1008: "The gateway let go: its answers were not read in time.",
  1011: "The gateway failed; see its logs.",
};

const live = {
  stream: null, // the MediaStream
  socket: null,
  timer: null,
  sent: 0, // sequence number of the next frame
  answered: -1, // last frame answered (judged or refused)
  judged: 0,
  people: new Map(), // track id -> {points: [score], card, canvas}
  threshold: 0.5,
};

function setState(state) {
  $("live").dataset.state = state;
  $("stop").disabled = !["connecting", "live"].includes(state);
  $("camera").disabled = $("screen").disabled = !$("stop").disabled;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function numberOf(id, fallback) {
  const input = $(id);
  const value = Number(input.value);
  return input.checkValidity() && Number.isFinite(value) ? value : fallback;
}

function socketUrl() {
  const url = new URL("api/live", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the key travels as a query parameter.
  const key = storedKey();
  if (key) url.searchParams.set("api_key", key);
  return url.href;
}

async function begin(kind) {
  showError("");
  try {
    live.stream =
      kind === "screen"
        ? await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false })
        : await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } } });
  } catch (error) {
    showError(`No video: ${error.message || error.name}`);
    return;
  }
  live.stream.getVideoTracks()[0].addEventListener("ended", () => finish());
  $("video").srcObject = live.stream;
  reset();
  connect();
}

function reset() {
  live.sent = 0;
  live.answered = -1;
  live.judged = 0;
  live.people.clear();
  $("people").replaceChildren();
  $("live").dataset.answered = "0";
  for (const id of ["sent", "judged", "dropped"]) $(id).textContent = "0";
  $("lag").textContent = "—";
  showVerdict(null, null, []);
}

function connect() {
  setState("connecting");
  live.threshold = numberOf("threshold", 0.5);
  const socket = new WebSocket(socketUrl());
  live.socket = socket;
  socket.addEventListener("open", () => {
    const start = { threshold: live.threshold, window: numberOf("window", 16) };
    socket.send(JSON.stringify({ start }));
  });
  socket.addEventListener("message", (event) => answer(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (live.socket !== socket) return;
    const words = CLOSE_WORDS[event.code];
    if (words) showError(words);
    if (event.code === 4401) askForKey();
    finish();
  });
}

function answer(message) {
  if (message.event === "started") {
    setState("live");
    const fps = Math.min(10, Math.max(0.5, numberOf("fps", 3)));
    live.timer = setInterval(sendFrame, 1000 / fps);
  } else if (message.event === "frame") {
    live.answered = Math.max(live.answered, message.frame);
    live.judged += 1;
    $("live").dataset.answered = String(live.judged);
    $("judged").textContent = String(live.judged);
    $("dropped").textContent = String(message.dropped);
    $("lag").textContent = `${Math.round(message.lag_ms)} ms`;
    drawBoxes(message);
    showVerdict(message.verdict, message.score, message.reasons || []);
    chart(message.tracks);
  } else if (message.event === "error") {
    if (message.frame !== undefined) live.answered = Math.max(live.answered, message.frame);
    showError(`${message.error.message} (${message.error.code})`);
  }
}

function sendFrame() {
  const video = $("video");
  const socket = live.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  if (live.sent - 1 - live.answered >= MAX_WAITING) return; // the gateway is behind
  const scale = Math.min(1, numberOf("size", 640) / Math.max(video.videoWidth, video.videoHeight));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  live.sent += 1;
  $("sent").textContent = String(live.sent);
  canvas.toBlob(
    (blob) => {
      if (blob && socket.readyState === WebSocket.OPEN) socket.send(blob);
    },
    "image/jpeg",
    0.85,
  );
}

function colourOf(track) {
  return PALETTE[track % PALETTE.length];
}

function drawBoxes(message) {
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  canvas.width = Math.round(rect.width);
  canvas.height = Math.round(rect.height);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  // The boxes are in the sent frame's pixels; the video is shown scaled to the stage.
  const sx = canvas.width / message.width;
  const sy = canvas.height / message.height;
  ctx.lineWidth = 3;
  ctx.font = "bold 14px system-ui, sans-serif";
  for (const face of message.faces) {
    const [x0, y0, x1, y1] = face.box;
    const fake = face.p_fake >= live.threshold;
    ctx.strokeStyle = fake ? "#e0262c" : "#2fa84f";
    ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
    const label = `#${face.track} ${Math.round(face.p_fake * 100)}%`;
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillRect(x0 * sx, Math.max(0, y0 * sy - 18), ctx.measureText(label).width + 8, 18);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x0 * sx + 4, Math.max(14, y0 * sy - 4));
  }
  canvas.dataset.faces = String(message.faces.length);
}

function showVerdict(verdict, score, reasons) {
  const kind = verdict || "none";
  $("verdict").dataset.verdict = kind;
  $("verdict-box").dataset.verdict = kind;
  $("verdict").textContent = verdict ? LIVE_VERDICT_WORDS[verdict] : "Not started";
  $("score").dataset.score = score === null || score === undefined ? "" : String(score);
  $("score").textContent =
    score === null || score === undefined
      ? "P(fake) —"
      : `P(fake) ${(score * 100).toFixed(1)}% (threshold ${Math.round(live.threshold * 100)}%)`;
  // Why the running verdict is not plainly fake or real (the same reasons as a file's).
  const list = $("reasons");
  list.replaceChildren(
    ...reasons.map((r) => {
      const item = document.createElement("li");
      item.dataset.code = r.code;
      item.textContent = `${r.code}: ${r.message}`;
      return item;
    }),
  );
  list.hidden = reasons.length === 0;
}

function chart(tracks) {
  for (const track of tracks) {
    let person = live.people.get(track.id);
    if (!person) {
      const canvas = document.createElement("canvas");
      const title = document.createElement("h4");
      const card = document.createElement("div");
      card.className = "live-person";
      card.dataset.track = String(track.id);
      card.append(title, canvas);
      $("people").append(card);
      person = { points: [], card, canvas, title };
      live.people.set(track.id, person);
    }
    person.points.push(track.score);
    if (person.points.length > CHART_POINTS) person.points.shift();
    person.card.dataset.score = String(track.score);
    person.title.textContent = `Person #${track.id}: ${(track.score * 100).toFixed(1)}%`;
    drawChart(person, colourOf(track.id));
  }
}

function drawChart(person, colour) {
  const canvas = person.canvas;
  const rect = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(rect.width));
  canvas.height = Math.max(1, Math.round(rect.height));
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const y = (p) => height - 2 - p * (height - 4);
  const x = (i) => (i / (CHART_POINTS - 1)) * width;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#4a4a4a";
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo(0, y(live.threshold));
  ctx.lineTo(width, y(live.threshold));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.beginPath();
  person.points.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p)) : ctx.moveTo(x(i), y(p))));
  ctx.stroke();
}

function finish() {
  clearInterval(live.timer);
  live.timer = null;
  const socket = live.socket;
  live.socket = null;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ stop: true }));
    socket.close(1000);
  }
  if (live.stream) for (const track of live.stream.getTracks()) track.stop();
  live.stream = null;
  setState("stopped");
}

function useKey(event) {
  takeKey(event);
  $("key-form").hidden = true;
  showError("");
}

function wire() {
  $("camera").addEventListener("click", () => begin("camera"));
  $("screen").addEventListener("click", () => begin("screen"));
  $("stop").addEventListener("click", () => finish());
  $("key-form").addEventListener("submit", useKey);
  if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
    $("screen").hidden = true; // phones: no tab sharing
  }
  setState("idle");
}

wire();
