// The review queue: GET /api/review-queue shows the next answer waiting for this key's
// review (its faces, heatmaps and scores); a label goes to POST /api/reviews, a skip to
// POST /api/review-queue/{answer_id}/skip. Keys F, R and S do the same as the buttons.
// Plain JavaScript, no build step, nothing fetched beyond this gateway.
"use strict";

const WHY_WORDS = {
  disputed: "disputed (the models' groups disagree)",
  uncertain: "uncertain",
  sampled: "sampled at random from confident answers",
};
const SOURCE_WORDS = { detect: "a checked file", job: "a batch's file", live: "a live session" };
const SHORTCUTS = { f: "fake", r: "real", s: "skip" };

const queue = { item: null, busy: false };

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

/** The gateway's JSON error in words: its message, or the status. */
async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/** A call to the gateway; a 401 asks for the key and returns null. */
async function call(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Accept: "application/json", ...keyHeaders(), ...(options.headers || {}) },
  });
  if (response.status === 401) {
    $("review").dataset.state = "locked";
    askForKey("This service needs an API key.");
    return null;
  }
  $("key-form").hidden = true;
  return response;
}

function showProgress(progress) {
  const { reviewed, left, skipped } = progress;
  const text = $("queue-progress");
  text.dataset.reviewed = reviewed;
  text.dataset.left = left;
  text.textContent =
    `Reviewed ${reviewed} · ${left} left` + (skipped ? ` (${skipped} skipped)` : "");
  $("queue-bar").max = Math.max(reviewed + left, 1);
  $("queue-bar").value = reviewed;
}

/** A face (bordered as its score judges it against the answer's threshold) and a caption. */
function figure(src, caption, alt, fake) {
  const image = el("img", { class: fake ? "thumb thumb-fake" : "thumb", src, alt });
  return el("figure", {}, image, el("figcaption", { text: caption }));
}

function showItem(item) {
  queue.item = item;
  $("item").hidden = !item;
  $("empty").hidden = Boolean(item);
  $("review").dataset.state = item ? "item" : "empty";
  if (!item) return;
  $("item").dataset.answer = item.answer_id;
  const isFake = (p) => p != null && item.threshold != null && p >= item.threshold;
  $("why").textContent = WHY_WORDS[item.why] || item.why;
  $("why").dataset.why = item.why;
  $("source").textContent = `from ${SOURCE_WORDS[item.source] || item.source}`;
  $("verdict-box").className = `verdict verdict-${item.verdict}`;
  $("verdict").textContent = VERDICT_WORDS[item.verdict] || item.verdict;
  const raw = item.raw_score != null ? ` (uncalibrated ${pct(item.raw_score)})` : "";
  $("score").textContent = `P(fake) ${pct(item.score)}${raw} · threshold ${item.threshold}`;
  $("reasons").replaceChildren(
    ...item.reasons.map((r) =>
      el("li", { "data-code": r.code }, el("code", { text: r.code }), `: ${r.message}`),
    ),
  );
  $("reasons").hidden = item.reasons.length === 0;
  $("faces").replaceChildren(
    ...item.faces.map((f) =>
      figure(f.crop, `frame ${f.frame} · ${pct(f.p_fake)}`, `face in frame ${f.frame}`, isFake(f.p_fake)),
    ),
  );
  $("heatmaps").replaceChildren(
    ...item.heatmaps.map((h) =>
      figure(
        h.heatmap,
        `${h.model} · frame ${h.frame} · ${pct(h.p_fake)}`,
        `heatmap of ${h.model}`,
        isFake(h.p_fake),
      ),
    ),
  );
  $("no-heatmaps").textContent = item.no_heatmaps ? `No heatmaps: ${item.no_heatmaps}.` : "";
  $("no-heatmaps").hidden = !item.no_heatmaps;
  $("models")
    .querySelector("tbody")
    .replaceChildren(
      ...item.models.map((m) =>
        el(
          "tr",
          {},
          el("td", { text: m.version != null ? `${m.name} v${m.version}` : m.name }),
          el("td", { text: m.voting ? `yes (weight ${m.weight})` : "no" }),
          el("td", { class: "num", text: pct(m.score) }),
        ),
      ),
    );
  $("models").hidden = item.models.length === 0;
  $("note").value = "";
}

async function loadNext() {
  showError("");
  let response;
  try {
    response = await call("api/review-queue?limit=1");
  } catch {
    showError("The gateway does not answer; is it running?");
    return;
  }
  if (!response) return;
  if (!response.ok) {
    $("review").dataset.state = "error";
    showError(await errorText(response));
    return;
  }
  const body = await response.json();
  showProgress(body.progress);
  showItem(body.items[0] || null);
}

/** Label the answer on screen ("fake"/"real") or skip it, then show the next one. */
async function act(action) {
  const item = queue.item;
  if (!item || queue.busy) return;
  queue.busy = true;
  for (const id of ["label-fake", "label-real", "skip"]) $(id).disabled = true;
  try {
    const response =
      action === "skip"
        ? await call(`api/review-queue/${item.answer_id}/skip`, { method: "POST" })
        : await call("api/reviews", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({
              answer_id: item.answer_id,
              label: action,
              note: $("note").value.trim() || null,
            }),
          });
    if (!response) return;
    // 404/409: labelled elsewhere, or expired meanwhile: the next one is what matters.
    if (!response.ok && ![404, 409].includes(response.status)) {
      showError(await errorText(response));
      return;
    }
    $("label-status").textContent = action === "skip" ? "Skipped." : `Labelled ${action}.`;
    await loadNext();
  } catch {
    showError("The gateway could not be reached; try again.");
  } finally {
    queue.busy = false;
    for (const id of ["label-fake", "label-real", "skip"]) $(id).disabled = false;
  }
}

function onKey(event) {
  const typing = ["TEXTAREA", "INPUT"].includes(event.target.tagName);
  if (typing && event.key === "Escape") event.target.blur();
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const action = SHORTCUTS[event.key.toLowerCase()];
  if (!action || !queue.item) return;
  event.preventDefault();
  act(action);
}

function useKey(event) {
  takeKey(event);
  loadNext();
}

$("label-fake").addEventListener("click", () => act("fake"));
$("label-real").addEventListener("click", () => act("real"));
$("skip").addEventListener("click", () => act("skip"));
$("key-form").addEventListener("submit", useKey);
document.addEventListener("keydown", onKey);
loadNext();
