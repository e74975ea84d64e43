// The gateway's web page: upload a file, follow the NDJSON stream of
// POST /api/detect/stream, draw the answer. Plain JavaScript, no build step and
// no network fetches beyond the gateway's own API.
"use strict";

const MB = 1 << 20;
// The suffixes the gateway's sniffer accepts (GET /api "formats"), plus their
// common aliases; the server checks the content anyway, this only spares a
// pointless upload.
const SUFFIX_ALIASES = { jpeg: ["jpg", "jpeg", "jfif"], mp4: ["mp4", "m4v"], mov: ["mov", "qt"] };
const STAGES = ["upload", "accepted", "decoded", "faces", "inference", "result"];
const PALETTE = ["#0b63b6", "#b35c00", "#7b3fa0", "#00786f", "#a8326a", "#4d6b00"];
const ENSEMBLE_COLOUR = "#1a1a1a";
const DECISIVE_COLOUR = "#b35c00";
const VOTE = "ensemble"; // the answer's name for the vote of the models
// Plot margins in CSS pixels; the width follows the page so text keeps its size.
const PLOT = { left: 40, right: 12, top: 12, bottom: 32, minWidth: 280, maxHeight: 260 };

// The gateway's defaults until GET /api tells (it may refuse without an API key).
const service = {
  maxUploadMb: 100,
  formats: ["mp4", "avi", "mov", "mkv", "webm", "jpeg", "png", "webp", "gif"],
  frames: 32,
  threshold: 0.5,
  ready: false,
};
let current = null; // the XMLHttpRequest in flight, if any
let shown = null; // the answer on screen, redrawn when the width changes
let downloadUrl = null;

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const seconds = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

// --- service facts --------------------------------------------------------------------

async function loadService() {
  const status = $("service");
  const fromUrl = new URLSearchParams(location.search).get("frames");
  try {
    const response = await fetch("api", {
      headers: { Accept: "application/json", ...keyHeaders() },
    });
    if (response.status === 401) {
      status.dataset.status = "locked";
      status.textContent = "This service needs an API key.";
      askForKey();
      return;
    }
    const info = await response.json();
    $("key-form").hidden = true;
    Object.assign(service, {
      maxUploadMb: info.max_upload_mb,
      formats: info.formats,
      frames: info.frames,
      threshold: info.threshold,
      ready: info.status === "ready",
    });
    // No Chromium on the gateway: no PDF button, rather than one that always fails.
    $("report-pdf").hidden = !info.pdf_reports;
    status.dataset.status = info.status;
    status.textContent = service.ready
      ? `Ready · ${info.profile} profile · threshold ${info.threshold}`
      : "The detection service (Triton) is unavailable; uploads will fail until it is back.";
    $("limits").textContent = `${info.formats.join(", ")} · up to ${info.max_upload_mb} MB.`;
    $("file").accept = acceptList(info.formats);
  } catch (error) {
    status.dataset.status = "unavailable";
    status.textContent = "The gateway does not answer; is it running?";
  } finally {
    if (!$("frames").value) $("frames").value = fromUrl || service.frames;
    if (!$("threshold").value) $("threshold").value = service.threshold;
  }
}

function useKey(event) {
  takeKey(event);
  clearError();
  loadService();
}

function suffixes(formats) {
  return formats.flatMap((f) => SUFFIX_ALIASES[f] || [f]);
}

function acceptList(formats) {
  return suffixes(formats)
    .map((s) => `.${s}`)
    .join(",");
}

// --- client-side checks ---------------------------------------------------------------

/** A human reason to refuse the file before uploading it, or null. */
function refusal(file) {
  const suffix = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
  const known = suffixes(service.formats);
  const mediaType = /^(video|image)\//.test(file.type);
  if (!known.includes(suffix) && !(mediaType && file.type !== "image/gif")) {
    return `“${file.name}” is not a supported video or image. Use ${service.formats.join(", ")}.`;
  }
  if (file.size === 0) return `“${file.name}” is empty.`;
  if (file.size > service.maxUploadMb * MB) {
    const size = (file.size / MB).toFixed(1);
    return `“${file.name}” is ${size} MB; the limit is ${service.maxUploadMb} MB.`;
  }
  return null;
}

// --- errors in words ------------------------------------------------------------------

/** What went wrong, for a person: by HTTP status, with the server's detail. */
function humanError(status, error, retryAfter) {
  const detail = error && error.message ? ` (${error.message})` : "";
  const retry = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again shortly.";
  const code = error ? error.code : null;
  if (code === "bad_url" || code === "url_refused") {
    return `The service does not fetch this link${detail}.`;
  }
  if (code === "stream_unreachable") {
    return "The link could not be fetched: it is unreachable, not allowed, or its server refused.";
  }
  switch (status) {
    case 0:
      return "The gateway could not be reached; check that it is running, then try again.";
    case "interrupted":
      return "The connection to the gateway was lost before the result came; try again.";
    case "unreadable":
      return "The gateway's answer could not be read; try again, or report it.";
    case 401:
      askForKey("Enter the API key the operator gave you.");
      return "This service needs a valid API key: enter it above, then try again.";
    case 400:
      return `The request was malformed${detail}.`;
    case 408:
      return "The upload was too slow and the gateway gave up; try again on a faster connection.";
    case 413:
      return `This file is too large for the service (limit ${service.maxUploadMb} MB).`;
    case 415:
      return `This file is not a supported video or image${detail}.`;
    case 422:
      return `The file could not be analysed${detail}.`;
    case 429:
      return `The service is busy with other files.${retry}`;
    case 503:
      return `The detection service is unavailable right now${detail}.${retry}`;
    case 504:
      return "The models took too long to answer; try a shorter clip or fewer frames.";
    default:
      return `The analysis failed (HTTP ${status})${detail}.`;
  }
}

function showError(message, status) {
  const box = $("error");
  box.textContent = message;
  box.dataset.status = String(status ?? "");
  box.hidden = false;
}

function clearError() {
  const box = $("error");
  box.hidden = true;
  box.textContent = "";
  delete box.dataset.status;
}

// --- progress ---------------------------------------------------------------------------

function logEvent(name, text) {
  const log = $("log");
  log.append(el("li", { "data-event": name, text: text ? `${name}: ${text}` : name }));
}

const stagesSeen = new Set();

function markStage(stage, text) {
  stagesSeen.add(stage);
  const reached = STAGES.indexOf(stage);
  for (const item of $("stages").children) {
    const index = STAGES.indexOf(item.dataset.stage);
    // A stage the gateway never announced (no face: no models to run) was skipped.
    const passed = stagesSeen.has(item.dataset.stage) ? "done" : "skipped";
    item.dataset.status = index < reached ? passed : index === reached ? "active" : "pending";
  }
  if (stage === "result") $("stages").lastElementChild.dataset.status = "done";
  if (text) $("stage-text").textContent = text;
}

/** The stage that was running when the analysis failed or was cancelled. */
function markStopped(text) {
  for (const item of $("stages").children) {
    if (item.dataset.status === "active") item.dataset.status = "error";
  }
  if (text) $("stage-text").textContent = text;
}

function setState(state) {
  $("app").dataset.state = state;
  const busy = state === "uploading" || state === "analysing";
  $("pick").disabled = busy;
  $("frames").disabled = busy;
  $("threshold").disabled = busy;
  $("explain").disabled = busy;
  $("all-models").disabled = busy;
  $("cancel").hidden = !busy;
  $("dropzone").setAttribute("aria-disabled", String(busy));
}

function resetProgress(file) {
  $("progress").hidden = false;
  $("progress-file").textContent = file.name;
  $("upload-bar").value = 0;
  $("upload-text").textContent = "0%";
  $("log").replaceChildren();
  $("stage-text").textContent = "";
  stagesSeen.clear();
  markStage("upload", "Uploading…");
}

// --- the upload and its stream --------------------------------------------------------------

function framesWanted() {
  const value = Number.parseInt($("frames").value, 10);
  return Number.isFinite(value) ? Math.min(300, Math.max(1, value)) : service.frames;
}

/** The operating point this request asks for where the field moved it from the gateway's
 * own (null: the gateway's, so an operator's GATEWAY_THRESHOLD is never overridden). */
function thresholdWanted() {
  const value = Number.parseFloat($("threshold").value);
  if (!Number.isFinite(value)) return null;
  const wanted = Math.min(1, Math.max(0, value));
  return wanted === service.threshold ? null : wanted;
}

/** The request's query: `fields`, and the threshold where one is wanted. */
function withThreshold(fields) {
  const query = new URLSearchParams(fields);
  const threshold = thresholdWanted();
  if (threshold !== null) query.set("threshold", String(threshold));
  return query;
}

function start(file) {
  if (current) return; // one file at a time; the drop zone is disabled meanwhile
  clearError();
  const reason = refusal(file);
  if (reason) {
    showError(reason, "client");
    return;
  }
  begin(file);
  const form = new FormData();
  form.append("file", file, file.name);
  upload(file, form);
}

/** A link instead of a file: the gateway fetches it (POST {"url"}), no upload from here. */
function startUrl(url) {
  if (current) return;
  clearError();
  // Shown without its query: a presigned link's query is its signature.
  const file = { name: url.split("?")[0].split("/").pop() || url.split("?")[0], size: 0 };
  begin(file);
  upload(file, JSON.stringify({ url }), "application/json");
}

function begin(file) {
  $("result").hidden = true;
  // A counter of analyses started: lets a watcher (and the tests) tell runs apart.
  $("app").dataset.run = String(Number($("app").dataset.run || 0) + 1);
  resetProgress(file);
  setState("uploading");
}

function upload(file, body, contentType) {
  const xhr = new XMLHttpRequest();
  const query = withThreshold({ thumbnails: "true", frames: String(framesWanted()) });
  if ($("explain").checked) query.set("explain", "true");
  if ($("all-models").checked) query.set("models", "all");
  let seen = 0; // characters of responseText already parsed
  let finished = false;
  let uploaded = false;
  let uploadStart = performance.now();
  let uploadMs = 0;
  current = xhr;

  const uploadDone = () => {
    if (uploaded) return;
    uploaded = true;
    uploadMs = performance.now() - uploadStart;
    $("upload-bar").value = 100;
    $("upload-text").textContent = "100%";
    logEvent("uploaded");
    markStage("accepted", "Waiting for the gateway…");
    setState("analysing");
  };
  const finish = (state) => {
    finished = true;
    current = null;
    setState(state);
  };
  const fail = (status, error, retryAfter) => {
    if (finished) return;
    logEvent("error", String(status));
    markStopped("Stopped.");
    finish("error");
    showError(humanError(status, error, retryAfter), status);
  };
  const handle = (event) => {
    if (finished) return;
    logEvent(event.event, describe(event));
    if (event.event === "error") {
      fail(event.status, event.error, null);
    } else if (event.event === "result") {
      markStage("result", "Done.");
      finish("done");
      clearError();
      showResult(event.result, file, uploadMs);
    } else {
      markStage(event.event, describe(event));
    }
  };
  const consume = () => {
    if (xhr.status !== 200) return; // an HTTP error: one JSON body, read on load
    if (!uploaded) uploadDone();
    const text = xhr.responseText;
    let end;
    while ((end = text.indexOf("\n", seen)) !== -1) {
      const line = text.slice(seen, end).trim();
      seen = end + 1;
      if (!line) continue;
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        fail("unreadable", null);
        xhr.abort();
        return;
      }
      handle(event);
    }
  };

  xhr.upload.addEventListener("loadstart", () => {
    uploadStart = performance.now();
    logEvent("upload");
  });
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    const share = Math.round((100 * e.loaded) / e.total);
    $("upload-bar").value = share;
    $("upload-text").textContent = `${share}%`;
  });
  xhr.upload.addEventListener("load", uploadDone);
  xhr.addEventListener("progress", consume);
  xhr.addEventListener("load", () => {
    if (xhr.status === 200) {
      consume();
      if (!finished) fail("interrupted", null);
      return;
    }
    let error = null;
    try {
      error = JSON.parse(xhr.responseText).error;
    } catch {
      // not the gateway's JSON (a proxy's page): the status alone tells the story
    }
    fail(xhr.status, error, xhr.getResponseHeader("Retry-After"));
  });
  xhr.addEventListener("error", () => fail(uploaded ? "interrupted" : 0, null));
  xhr.addEventListener("abort", () => {
    if (finished) return;
    logEvent("cancelled");
    markStopped("Cancelled.");
    finish("idle");
  });

  xhr.open("POST", `api/detect/stream?${query}`);
  xhr.setRequestHeader("Accept", "application/x-ndjson");
  if (contentType) xhr.setRequestHeader("Content-Type", contentType);
  for (const [name, value] of Object.entries(keyHeaders())) xhr.setRequestHeader(name, value);
  xhr.send(body);
}

function describe(event) {
  switch (event.event) {
    case "accepted":
      return `${(event.bytes / MB).toFixed(1)} MB received`;
    case "decoded":
      return `${event.frames} frame${event.frames === 1 ? "" : "s"} decoded`;
    case "faces":
      return `${event.faces} face${event.faces === 1 ? "" : "s"} of ${event.tracks} ${
        event.tracks === 1 ? "person" : "people"
      } found`;
    case "inference":
      return `models: ${event.done} of ${event.total} faces scored`;
    case "error":
      return event.error ? event.error.code : "";
    default:
      return "";
  }
}

// --- the result -------------------------------------------------------------------------

function showResult(answer, file, uploadMs) {
  shown = answer;
  $("result").hidden = false; // first: the plot takes its width from the page
  renderVerdict(answer);
  renderCredentials(answer);
  renderModels(answer);
  renderPlot(answer);
  renderExplanations(answer);
  renderTracks(answer);
  renderMedia(answer, file);
  renderTimings(answer, uploadMs);
  renderNotes(answer);
  renderRaw(answer);
  $("verdict").focus({ preventScroll: true });
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderVerdict(answer) {
  const box = $("verdict-box");
  box.className = `verdict verdict-${answer.verdict}`;
  box.dataset.verdict = answer.verdict;
  $("verdict").textContent = VERDICT_WORDS[answer.verdict];
  $("verdict").tabIndex = -1;
  const gauge = $("gauge-fill");
  const mark = $("gauge-threshold");
  mark.style.left = `${answer.threshold * 100}%`;
  renderReasons(answer.reasons || []);
  if (declaresAi(answer)) {
    // Valid credentials declaring AI generation decide, whatever the faces scored.
    $("verdict-detail").textContent =
      "The file's content credentials declare it generated by AI" +
      (answer.score == null
        ? "; no face was found to score."
        : ` (the faces' P(fake): ${pct(answer.score)}).`);
    gauge.parentElement.hidden = answer.score == null;
    if (answer.score != null) gauge.style.width = `${answer.score * 100}%`;
    return;
  }
  if (answer.score == null) {
    $("verdict-detail").textContent =
      "No face was found in any sampled frame, so there is nothing to judge. " +
      "Try a clip where a face is visible, or sample more frames.";
    gauge.parentElement.hidden = true;
    return;
  }
  $("verdict-detail").textContent =
    `P(fake) ${pct(answer.score)} · threshold ${pct(answer.threshold)} — ` +
    (answer.score >= answer.threshold ? "at or above the threshold" : "below the threshold") +
    (answer.verdict === "uncertain" ? ", but too close to call or on too little evidence." : ".");
  gauge.parentElement.hidden = false;
  gauge.style.width = `${answer.score * 100}%`;
}

/** Why the verdict is not plainly fake or real: each reason's code and message. */
function renderReasons(reasons) {
  const list = $("reasons");
  list.replaceChildren(
    ...reasons.map((r) =>
      el("li", { "data-code": r.code }, el("code", { text: r.code }), `: ${r.message}`),
    ),
  );
  list.hidden = reasons.length === 0;
}

/** The verdict was decided by content credentials that declare AI generation. */
function declaresAi(answer) {
  return (answer.reasons || []).some((r) => r.code === "declared_ai_generated");
}

const CREDENTIAL_STATES = {
  trusted: "Signed and unchanged since, by a signer this service trusts.",
  valid: "Signed and unchanged since; the signer is not one this service is set to trust.",
  invalid:
    "Signed, but the signature no longer matches: the file was changed after signing, " +
    "so what the credentials declare is not taken into account.",
};

/** The file's C2PA content credentials, when it carries any (the answer omits them if not). */
function renderCredentials(answer) {
  const c = answer.content_credentials;
  const section = $("credentials");
  section.hidden = !c;
  if (!c) return;
  section.dataset.state = c.state;
  section.dataset.aiGenerated = String(c.ai_generated);
  const claim = c.state === "invalid" ? " They claim AI generation: unverifiable." : "";
  const declared = c.ai_generated ? claim || " They declare it generated by AI." : "";
  $("credentials-state").textContent = CREDENTIAL_STATES[c.state] + declared;
  const source = (type) => (type ? type.split("/").pop() : "");
  const action = (a) =>
    a.digital_source_type ? `${a.action} (${source(a.digital_source_type)})` : a.action;
  const actions = c.actions.map(action).join(", ");
  const facts = [
    ["signed by", c.signer],
    ["issued by", c.issuer],
    ["made with", c.claim_generator],
    ["created", c.created],
    ["actions", actions],
    ["failures", c.failures.join(", ")],
  ].filter(([, value]) => value);
  $("credentials-facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
  );
}

/** Where a model's weights come from; fields the export left empty are skipped. */
function provenance(weights) {
  const sha = weights.sha256 ? `sha256 ${weights.sha256.slice(0, 12)}…` : "";
  return [weights.file, weights.source, weights.licence, sha]
    .filter((part) => part && part !== "n/a")
    .join(" · ");
}

function renderModels(answer) {
  const rows = answer.models.map((model, n) => {
    const name = el("span", { class: "model-name", text: model.name });
    const labels = el("span", { class: "model-labels" });
    if (!model.trained)
      labels.append(el("span", { class: "tag untrained", text: "untrained — not voting" }));
    else if (!model.voting) labels.append(el("span", { class: "tag", text: "not voting" }));
    else
      labels.append(
        el("span", { class: "tag voting", text: `votes · weight ${model.weight.toFixed(2)}` }),
      );
    const width = model.score == null ? 0 : model.score * 100;
    const bar = el(
      "div",
      {
        class: "bar",
        role: "meter",
        "aria-valuemin": "0",
        "aria-valuemax": "1",
        "aria-valuenow": String(model.score ?? 0),
        "aria-label": `${model.name} P(fake)`,
      },
      el("div", { class: "bar-fill", style: `width:${width}%;background:${colour(n)}` }),
      el("div", { class: "bar-threshold", style: `left:${answer.threshold * 100}%` }),
    );
    return el(
      "div",
      {
        class: `model${model.trained ? "" : " model-untrained"}`,
        "data-model": model.name,
        "data-trained": String(model.trained),
      },
      el(
        "div",
        { class: "model-head" },
        name,
        labels,
        el("span", { class: "model-score", text: pct(model.score) }),
      ),
      bar,
      el("p", { class: "provenance", text: `Weights: ${provenance(model.weights)}` }),
      ...(model.trained_on
        ? [el("p", { class: "provenance", text: `Trained on: ${model.trained_on}` })]
        : []),
    );
  });
  // Members that cannot vote were not run (unless "all models" was asked for): say so.
  const skipped = (answer.skipped || []).map((model) =>
    el(
      "div",
      { class: "model model-untrained model-skipped", "data-model": model.name, "data-skipped": "true" },
      el(
        "div",
        { class: "model-head" },
        el("span", { class: "model-name", text: model.name }),
        el("span", { class: "model-labels" }, el("span", { class: "tag untrained", text: "skipped" })),
        el("span", { class: "model-score", text: "not run" }),
      ),
      el("p", { class: "provenance", text: `Not run: ${model.reason}` }),
    ),
  );
  $("models").replaceChildren(...rows, ...skipped);
}

const colour = (n) => PALETTE[n % PALETTE.length];

/** Per frame, the score of the most suspicious face, for each model and the vote. */
function series(answer) {
  const names = answer.models.map((m) => m.name);
  const lines = Object.fromEntries([...names, "ensemble"].map((n) => [n, []]));
  for (const frame of answer.frames) {
    const x = answer.media.kind === "video" ? frame.timestamp_s : frame.index;
    for (const name of names) {
      const scores = frame.faces.map((f) => f.models[name]).filter((s) => s != null);
      lines[name].push([x, scores.length ? Math.max(...scores) : null]);
    }
    const votes = frame.faces.map((f) => f.p_fake);
    lines.ensemble.push([x, votes.length ? Math.max(...votes) : null]);
  }
  return lines;
}

function renderPlot(answer) {
  if (!answer.frames.some((frame) => frame.faces.length)) {
    $("plot").replaceChildren(el("p", { text: "No face in any frame: nothing to plot." }));
    $("legend").replaceChildren();
    return;
  }
  const lines = series(answer);
  const xs = answer.frames.map((f) => (answer.media.kind === "video" ? f.timestamp_s : f.index));
  const x0 = Math.min(...xs, 0);
  const x1 = Math.max(...xs, x0 + 1e-6);
  const { left, right, top, bottom } = PLOT;
  const width = Math.max(PLOT.minWidth, Math.round($("plot").clientWidth || 640));
  const height = Math.min(PLOT.maxHeight, Math.round(width * 0.55));
  const sx = (x) => left + ((x - x0) / (x1 - x0 || 1)) * (width - left - right);
  const sy = (y) => top + (1 - y) * (height - top - bottom);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "P(fake) per sampled frame, per model and for the ensemble",
    width,
    height,
  });
  const axes = svg("g", { class: "axes" });
  for (const y of [0, 0.25, 0.5, 0.75, 1]) {
    axes.append(svg("line", { x1: left, x2: width - right, y1: sy(y), y2: sy(y), class: "grid" }));
    const label = svg("text", { x: left - 6, y: sy(y) + 4, "text-anchor": "end" });
    label.textContent = y.toFixed(2);
    axes.append(label);
  }
  for (const x of ticks(x0, x1)) {
    const label = svg("text", { x: sx(x), y: height - bottom + 18, "text-anchor": "middle" });
    label.textContent = answer.media.kind === "video" ? `${x.toFixed(1)} s` : `#${x}`;
    axes.append(label);
  }
  axes.append(
    svg("line", {
      x1: left,
      x2: width - right,
      y1: sy(answer.threshold),
      y2: sy(answer.threshold),
      class: "threshold",
    }),
  );
  chart.append(axes);
  // The frames whose faces decided the verdict (the explained faces of the most fake person).
  const xOf = new Map(
    answer.frames.map((f) => [f.index, answer.media.kind === "video" ? f.timestamp_s : f.index]),
  );
  const marks = svg("g", { class: "decisive-marks" });
  for (const frame of decisiveFrames(answer)) {
    const mark = svg("line", {
      x1: sx(xOf.get(frame)),
      x2: sx(xOf.get(frame)),
      y1: top,
      y2: height - bottom,
      stroke: DECISIVE_COLOUR,
      "stroke-width": 2,
      class: "decisive",
      "data-frame": String(frame),
    });
    const title = svg("title");
    title.textContent = `frame ${frame}: decided the verdict`;
    mark.append(title);
    marks.append(mark);
  }
  chart.append(marks);

  const legend = [];
  const untrained = new Set(answer.models.filter((m) => !m.trained).map((m) => m.name));
  Object.entries(lines).forEach(([name, points], n) => {
    const stroke = name === "ensemble" ? ENSEMBLE_COLOUR : colour(n);
    const group = svg("g", { class: "series", "data-series": name });
    const path = svg("path", {
      d: pathData(points, sx, sy),
      fill: "none",
      stroke,
      "stroke-width": name === "ensemble" ? 3 : 1.8,
      "stroke-dasharray": untrained.has(name) ? "5 4" : "none",
      class: "line",
    });
    const title = svg("title");
    title.textContent = name;
    path.append(title);
    group.append(path);
    // Markers too: an image (one frame) or an isolated face has no line to draw.
    for (const [x, y] of points) {
      if (y != null) group.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: stroke }));
    }
    chart.append(group);
    const label =
      name === "ensemble" ? "ensemble (vote)" : untrained.has(name) ? `${name} (untrained)` : name;
    legend.push(
      el(
        "li",
        { "data-series": name },
        el("span", {
          class: `swatch${untrained.has(name) ? " swatch-dashed" : ""}`,
          style: `border-color:${stroke}`,
          "aria-hidden": "true",
        }),
        label,
      ),
    );
  });
  $("plot").replaceChildren(chart);
  $("legend").replaceChildren(...legend);
}

/** SVG path through the points; a frame without a face breaks the line. */
function pathData(points, sx, sy) {
  let d = "";
  let pen = false;
  for (const [x, y] of points) {
    if (y == null) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
    pen = true;
  }
  return d;
}

function ticks(x0, x1) {
  const span = x1 - x0;
  if (span <= 0) return [x0];
  const step = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120].find((s) => span / s <= 6) || span / 5;
  const out = [];
  for (let x = Math.ceil(x0 / step) * step; x <= x1 + 1e-9; x += step)
    out.push(Number(x.toFixed(3)));
  return out;
}

/** Frames of the most fake person's explained faces: those that decided the verdict. */
function decisiveFrames(answer) {
  if (!answer.tracks.length || !(answer.explanations || []).length) return [];
  const decisive = (
    answer.tracks.find((t) => t.decisive) ||
    answer.tracks.reduce((a, b) => (b.score > a.score ? b : a))
  ).id;
  const frames = answer.explanations.filter((e) => e.track === decisive).map((e) => e.frame);
  return [...new Set(frames)].sort((a, b) => a - b);
}

/** The heatmaps of the decisive faces, one model at a time, chosen by a toggle. */
function renderExplanations(answer) {
  const explanations = answer.explanations || [];
  const section = $("explain-section");
  section.hidden = !explanations.length;
  const legend = $("explain-models").querySelector("legend");
  if (!explanations.length) {
    $("explain-models").replaceChildren(legend);
    $("explain-faces").replaceChildren();
    return;
  }
  const models = [...new Set(explanations.map((e) => e.model))].sort((a, b) =>
    a === VOTE ? -1 : b === VOTE ? 1 : a.localeCompare(b),
  );
  const toggles = models.map((model) => {
    const input = el("input", {
      type: "radio",
      name: "explain-model",
      value: model,
      id: `explain-model-${model}`,
    });
    input.checked = model === models[0];
    input.addEventListener("change", () => showHeatmaps(model));
    return el(
      "label",
      { for: input.id, "data-model": model },
      input,
      model === VOTE ? " the vote" : ` ${model}`,
    );
  });
  $("explain-models").replaceChildren(legend, ...toggles);

  const timestamps = new Map(answer.frames.map((f) => [f.index, f.timestamp_s]));
  const faces = new Map();
  for (const e of explanations) {
    const key = `${e.track}/${e.frame}/${e.face}`;
    if (!faces.has(key)) faces.set(key, []);
    faces.get(key).push(e);
  }
  const figures = [...faces.values()].map((maps) => {
    const { track, frame, face } = maps[0];
    const when =
      answer.media.kind === "video" ? `${timestamps.get(frame).toFixed(2)} s` : `frame ${frame}`;
    const images = maps.map((e) =>
      el("img", {
        src: e.heatmap,
        width: "128",
        height: "128",
        class: "heatmap",
        "data-model": e.model,
        alt: `${e.model === VOTE ? "the vote" : e.model}: where it saw a fake, person ${
          track + 1
        } at ${when}, P(fake) ${pct(e.p_fake)}`,
      }),
    );
    const captions = maps.map((e) =>
      el("figcaption", {
        "data-model": e.model,
        text: `${pct(e.p_fake)} · person ${track + 1} · ${when}`,
      }),
    );
    return el(
      "figure",
      {
        class: "explained",
        "data-track": String(track),
        "data-frame": String(frame),
        "data-face": String(face),
      },
      ...images,
      ...captions,
    );
  });
  $("explain-faces").replaceChildren(...figures);
  showHeatmaps(models[0]);
}

function showHeatmaps(model) {
  for (const node of $("explain-faces").querySelectorAll("[data-model]")) {
    node.hidden = node.dataset.model !== model;
  }
  $("explain-faces").dataset.model = model;
}

// --- the report -----------------------------------------------------------------------------

/** The gateway renders the report of the answer on screen (POST /api/report). */
async function downloadReport(format) {
  if (!shown) return;
  const status = $("report-status");
  status.textContent = format === "pdf" ? "Printing the PDF…" : "Preparing the report…";
  try {
    const response = await fetch(`api/report?format=${format}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...keyHeaders() },
      body: JSON.stringify(shown),
    });
    if (!response.ok) {
      let error = null;
      try {
        error = (await response.json()).error;
      } catch {
        // not the gateway's JSON
      }
      status.textContent =
        error?.code === "pdf_unavailable"
          ? "This gateway cannot print PDFs (no Chromium); download the HTML report and print it."
          : humanError(response.status, error);
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", {
      href: url,
      download: `${(shown.filename || "upload").replace(/\.[^.]*$/, "")}.deepfake-report.${format}`,
    });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status.textContent = "Report downloaded.";
  } catch {
    status.textContent = humanError(0, null);
  }
}

function renderTracks(answer) {
  const byTrack = new Map(answer.tracks.map((t) => [t.id, []]));
  for (const frame of answer.frames) {
    for (const face of frame.faces) {
      if (!byTrack.has(face.track)) byTrack.set(face.track, []);
      byTrack.get(face.track).push({ frame, face });
    }
  }
  const cards = answer.tracks.map((track) => {
    const faces = byTrack.get(track.id) || [];
    const scores = Object.entries(track.models)
      .map(([name, score]) => `${name} ${pct(score)}`)
      .join(" · ");
    const strip = el("ul", { class: "thumbs" });
    for (const { frame, face } of faces) {
      if (!face.thumbnail) continue;
      const when =
        answer.media.kind === "video"
          ? `${frame.timestamp_s.toFixed(2)} s`
          : `frame ${frame.index}`;
      strip.append(
        el(
          "li",
          {},
          el(
            "figure",
            {},
            el("img", {
              src: face.thumbnail,
              alt: `person ${track.id + 1} at ${when}, P(fake) ${pct(face.p_fake)}`,
              width: "72",
              height: "72",
              class: face.p_fake >= answer.threshold ? "thumb thumb-fake" : "thumb",
            }),
            el("figcaption", { text: `${pct(face.p_fake)} · ${when}` }),
          ),
        ),
      );
    }
    return el(
      "article",
      { class: "track", "data-track": String(track.id) },
      el("h4", { text: `Person ${track.id + 1}: P(fake) ${pct(track.score)}` }),
      el("p", {
        class: "hint",
        text:
          `${track.frames.length} frame(s) · ${scores}` +
          (track.short ? " · seen too briefly to decide alone" : ""),
      }),
      strip,
    );
  });
  if (!cards.length) cards.push(el("p", { text: "No face was found." }));
  $("tracks").replaceChildren(...cards);
}

function renderMedia(answer, file) {
  const m = answer.media;
  const facts = [
    ["file", `${answer.filename || file.name} (${((answer.bytes ?? file.size) / MB).toFixed(2)} MB)`],
    ["kind", `${m.kind}, ${m.format}`],
    ["size", `${m.width} × ${m.height}`],
    [
      "frames",
      `${m.frame_count}${m.fps ? ` at ${m.fps.toFixed(2)} fps` : ""}, ${answer.frames.length} sampled`,
    ],
    ["duration", m.duration_s == null ? "—" : `${m.duration_s.toFixed(2)} s`],
    ["request id", answer.request_id],
  ];
  $("media").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]),
  );
}

function renderTimings(answer, uploadMs) {
  // The streaming route does not time the upload; the browser's own measure is.
  const t = { ...answer.timings_ms };
  if (!t.upload && uploadMs) t.upload = uploadMs;
  const longest = Math.max(t.total, t.upload, 1);
  const stages = ["upload", "decode", "detect", "infer", "aggregate", "explain", "total"];
  const rows = stages.filter((stage) => stage !== "explain" || t.explain).map((stage) =>
    el(
      "tr",
      { "data-stage": stage },
      el("th", { scope: "row", text: stage }),
      el("td", { class: "num", text: seconds(t[stage]) }),
      el(
        "td",
        { class: "timing-bar" },
        el("span", { style: `width:${(100 * t[stage]) / longest}%` }),
      ),
    ),
  );
  $("timings").tBodies[0].replaceChildren(...rows);
}

function renderNotes(answer) {
  $("notes").replaceChildren(...answer.notes.map((note) => el("li", { text: note })));
}

function renderRaw(answer) {
  const text = JSON.stringify(answer, null, 2);
  $("raw").textContent = text;
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = $("download");
  link.href = downloadUrl;
  link.download = `${(answer.filename || "result").replace(/\.[^.]*$/, "")}.deepfake.json`;
  $("copy-status").textContent = "";
  $("report-status").textContent = "";
}

async function copyRaw() {
  const text = $("raw").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch {
    // No clipboard (plain http on another host): select the text for Ctrl-C instead.
    const details = $("raw").closest("details");
    details.open = true;
    getSelection().selectAllChildren($("raw"));
    $("copy-status").textContent = "Selected: press Ctrl-C to copy.";
  }
}

// --- wiring -----------------------------------------------------------------------------

function filesOf(event) {
  return event.dataTransfer && event.dataTransfer.files ? [...event.dataTransfer.files] : [];
}

function wire() {
  const zone = $("dropzone");
  const input = $("file");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    if (input.files.length > 1) startJob([...input.files]); // jobs.js
    else if (input.files.length) start(input.files[0]);
    input.value = ""; // the same file twice in a row still fires "change"
  });
  // The whole window takes drops: a file dropped beside the zone must not make
  // the browser navigate away to it.
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", (e) => {
    if (e.relatedTarget === null) zone.classList.remove("dragging");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const files = filesOf(e);
    if (current) {
      showError("Please wait for the current file, or cancel it, before dropping another.", "busy");
    } else if (files.length > 1) {
      startJob(files); // jobs.js: a batch
    } else if (files.length) {
      start(files[0]);
    }
  });
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const urls = $("media-url").value.split(/\s+/).filter(Boolean);
    if (current) {
      showError("Please wait for the current file, or cancel it, before checking a link.", "busy");
    } else if (urls.length > 1) {
      startJobUrls(urls); // jobs.js: a batch
    } else if (urls.length) {
      startUrl(urls[0]);
    }
  });
  $("cancel").addEventListener("click", () => current && current.abort());
  $("copy").addEventListener("click", copyRaw);
  $("report-html").addEventListener("click", () => downloadReport("html"));
  $("report-pdf").addEventListener("click", () => downloadReport("pdf"));
  $("key-form").addEventListener("submit", useKey);
  let redraw = 0;
  window.addEventListener("resize", () => {
    clearTimeout(redraw);
    redraw = setTimeout(() => shown && !$("result").hidden && renderPlot(shown), 150);
  });
  setState("idle");
}

wire();
loadService();
