// What the pages share (/, /live, /review): the tab-only API key and its form, and the small
// DOM helpers. A classic script each page loads before its own (deferred scripts run in order,
// in one global scope), so the pages read these names as their own. No build step, no modules.
"use strict";

// An API key, when the operator set GATEWAY_API_KEYS: kept for this tab only, one for all
// the pages.
const KEY_STORE = "deepfake-api-key";
const KEY_REFUSED = "That key was refused; check it.";
const VERDICT_WORDS = {
  fake: "Likely fake",
  real: "Likely real",
  uncertain: "Uncertain",
  no_face: "No face found",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const pct = (p) => (p == null ? "—" : `${(p * 100).toFixed(1)}%`);

const storedKey = () => sessionStorage.getItem(KEY_STORE);

/** The headers that carry this tab's key to the gateway, if it keeps one. */
function keyHeaders() {
  const key = storedKey();
  return key ? { "X-API-Key": key } : {};
}

/** The key form shown, saying why: the key this tab sent was refused, or else `otherwise`. */
function askForKey(otherwise = "") {
  $("key-form").hidden = false;
  $("key-help").textContent = storedKey() ? KEY_REFUSED : otherwise;
}

/** The key form's submit: its key kept for this tab (an empty one forgets it), the field
 * emptied. The page then calls the gateway again with it. */
function takeKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $("api-key").value = "";
}

/** The API key form, hidden until the gateway refuses a call: one form for every page, put
 * at the end of the page's header here rather than written again in each page's HTML. */
function keyForm() {
  return el(
    "form",
    { id: "key-form", class: "key-form", hidden: "" },
    el("label", { for: "api-key", text: "API key" }),
    el("input", { type: "password", id: "api-key", autocomplete: "off", required: "" }),
    el("button", { type: "submit", text: "Use key" }),
    el("span", { id: "key-help", class: "hint", "aria-live": "polite" }),
  );
}

document.querySelector("header.top").append(keyForm());
