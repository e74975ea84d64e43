// Several files (or links) at once: one job (POST /api/jobs), a queue table that follows
// GET /api/jobs/{id}; a row opens that file's full result (the same view as a
// single upload). The job id is kept in the URL (?job=), so a reload brings the
// batch back. Uses common.js's helpers ($, el, keyHeaders) and app.js's (showResult, errors).
"use strict";

const JOB_POLL_MS = 1000;
const JOB_WORDS = {
  queued: "Queued",
  running: "Analysing",
  done: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
};
let jobTimer = null;
let jobShown = null; // the job id on screen

const jobPath = (id) => `api/jobs/${encodeURIComponent(id)}`;

function setJobInUrl(id) {
  const url = new URL(location.href);
  if (id) url.searchParams.set("job", id);
  else url.searchParams.delete("job");
  history.replaceState(null, "", url);
}

/** Submit the files as one job: every file is analysed, a bad one only fails its row. */
async function startJob(files) {
  clearError();
  const tooBig = files.filter((f) => f.size > service.maxUploadMb * MB);
  if (tooBig.length) {
    const names = tooBig.map((f) => `“${f.name}”`).join(", ");
    showError(`${names}: over the ${service.maxUploadMb} MB limit per file.`, "client");
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  await submitJob(form, {}, `Uploading ${files.length} files…`);
}

/** Links as one job: the gateway fetches each (POST {"urls"}); nothing is uploaded from here. */
async function startJobUrls(urls) {
  clearError();
  const body = JSON.stringify({ urls });
  await submitJob(body, { "Content-Type": "application/json" }, `Fetching ${urls.length} links…`);
}

async function submitJob(payload, headers, status) {
  stopWatching();
  $("result").hidden = true;
  $("progress").hidden = true;
  $("job").hidden = false;
  $("job").dataset.status = "uploading";
  $("job-status").textContent = status;
  $("job-table").tBodies[0].replaceChildren();
  const query = withThreshold({ frames: String(framesWanted()) });
  let response;
  let body = null;
  try {
    response = await fetch(`api/jobs?${query}`, {
      method: "POST",
      body: payload,
      headers: { ...headers, ...keyHeaders() },
    });
    body = await response.json();
  } catch {
    jobFailed(humanError(response ? "unreadable" : 0, null), 0);
    return;
  }
  if (response.status !== 202) {
    const retry = response.headers.get("Retry-After");
    jobFailed(humanError(response.status, body && body.error, retry), response.status);
    return;
  }
  setJobInUrl(body.id);
  renderJob(body);
  watchJob(body.id);
}

function jobFailed(message, status) {
  $("job").hidden = true;
  showError(message, status);
}

function stopWatching() {
  clearTimeout(jobTimer);
  jobTimer = null;
}

async function watchJob(id) {
  stopWatching();
  jobShown = id;
  let response;
  try {
    response = await fetch(jobPath(id), { headers: { Accept: "application/json", ...keyHeaders() } });
  } catch {
    jobTimer = setTimeout(() => watchJob(id), JOB_POLL_MS * 3); // the gateway restarts: wait
    return;
  }
  if (jobShown !== id) return; // another batch started meanwhile
  if (response.status === 404) {
    setJobInUrl(null);
    jobFailed("This batch is no longer kept (or belongs to another API key).", 404);
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    jobFailed(humanError(response.status, body && body.error), response.status);
    return;
  }
  const job = await response.json();
  renderJob(job);
  if (job.finished === null) jobTimer = setTimeout(() => watchJob(id), JOB_POLL_MS);
}

function renderJob(job) {
  const section = $("job");
  section.hidden = false;
  section.dataset.status = job.status;
  section.dataset.job = job.id;
  const p = job.progress;
  $("job-status").textContent =
    `${JOB_WORDS[job.status]} · ${p.finished} of ${p.total} files finished` +
    (p.failed ? ` · ${p.failed} failed` : "");
  $("job-cancel").hidden = job.finished !== null;
  const rows = job.items.map((item) => jobRow(job, item));
  $("job-table").tBodies[0].replaceChildren(...rows);
}

function jobRow(job, item) {
  const result = item.result;
  const name = result
    ? el("button", { type: "button", class: "link", text: item.filename })
    : el("span", { text: item.filename });
  if (result) {
    name.addEventListener("click", () => {
      showResult(result, { name: item.filename, size: item.bytes }, result.timings_ms.upload);
    });
  }
  let verdict = "—";
  const reasons = result ? result.reasons || [] : [];
  if (result) verdict = VERDICT_WORDS[result.verdict];
  else if (item.error) verdict = `${item.error.code}: ${item.error.message}`;
  // The reasons' codes beside the verdict; their messages when the row opens.
  if (reasons.length) verdict += ` (${reasons.map((r) => r.code).join(", ")})`;
  return el(
    "tr",
    { "data-item": String(item.id), "data-status": item.status },
    el("td", {}, name),
    el("td", { class: "job-state", text: JOB_WORDS[item.status] }),
    el("td", { class: "job-verdict", text: verdict }),
    el("td", { class: "job-score", text: result ? pct(result.score) : "—" }),
  );
}

async function cancelJob() {
  if (!jobShown) return;
  // POST …/cancel stops it and keeps it readable; DELETE would remove the job and its results.
  await fetch(`${jobPath(jobShown)}/cancel`, { method: "POST", headers: keyHeaders() }).catch(
    () => null,
  );
  watchJob(jobShown);
}

$("job-cancel").addEventListener("click", cancelJob);
const jobInUrl = new URLSearchParams(location.search).get("job");
if (jobInUrl) watchJob(jobInUrl);
