// The gateway's dashboard: signs in with an admin's API key (kept in sessionStorage only),
// reads /analytics, /blocks and /users every 5 s, draws the last hour per minute as SVG, and
// blocks, unblocks, sets limits, rotates keys and deletes users through the same JSON routes
// any client uses. Every error the gateway answers (problem+json) is shown, never swallowed.
"use strict";

const STORAGE = "ratelimit-gateway.admin-key";
const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

let timer = null;
// Users whose "Delete" was clicked once: the next click deletes.
const armed = new Set();

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** One call of the gateway's API with the admin's key; the JSON answer, or an ApiError. */
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(STORAGE) };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the gateway does not answer (" + e.message + ")");
  }
  let json = null;
  try {
    json = await response.json();
  } catch (e) {
    json = null;
  }
  if (!response.ok) {
    const detail = json && json.detail ? json.detail : response.statusText;
    const title = json && json.title ? json.title : "Error";
    throw new ApiError(response.status, response.status + " " + title + ": " + detail);
  }
  return json;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

/** A failed call: a key that is wrong or not an admin's signs out; anything else is shown. */
function failed(e) {
  showError(e.message);
  if (e.status === 401 || (e.status === 403 && /admins/.test(e.message))) {
    signOut(false);
  }
}

function signedIn() {
  return sessionStorage.getItem(STORAGE) !== null;
}

function signOut(clearMessages) {
  sessionStorage.removeItem(STORAGE);
  clearTimeout(timer);
  timer = null;
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("updated").textContent = "";
  if (clearMessages) {
    showError("");
    showNotice("");
  }
}

/** Reads everything and draws it; then again in 5 s while signed in. */
async function refresh() {
  clearTimeout(timer);
  timer = null;
  if (!signedIn()) return;
  try {
    const [analytics, blocks, users] = await Promise.all([
      api("GET", "/analytics"),
      api("GET", "/blocks"),
      allUsers(),
    ]);
    $("sign-in").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    drawAnalytics(analytics, new Map(users.map((u) => [u.id, u.username])));
    drawBlocks(blocks.blocks);
    drawUsers(users, analytics);
    showError("");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    failed(e);
  }
  if (signedIn()) timer = setTimeout(refresh, REFRESH_MS);
}

/** Every page of /users (at most 10,000 users). */
async function allUsers() {
  let users = [];
  let after = null;
  for (let page = 0; page < 10; page++) {
    const query = after === null ? "" : "&after=" + after;
    const reply = await api("GET", "/users?limit=1000" + query);
    users = users.concat(reply.users);
    if (reply.next_after === undefined) break;
    after = reply.next_after;
  }
  return users;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(text, action, value, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.dataset.action = action;
  b.dataset.value = String(value);
  if (className) b.className = className;
  return b;
}

/** The figures, the chart and the most denied (`names`: user id → username, of /users). */
function drawAnalytics(analytics, names) {
  const [minute, hour] = analytics.windows;
  $("allowed-minute").textContent = String(minute.allowed);
  $("denied-minute").textContent = String(minute.denied);
  $("allowed-hour").textContent = String(hour.allowed);
  $("denied-hour").textContent = String(hour.denied);
  drawChart(analytics.per_minute);

  const users = $("top-users");
  users.replaceChildren();
  for (const u of analytics.most_denied_users) {
    const row = users.insertRow();
    row.dataset.userId = String(u.user_id);
    cell(row, u.user_id);
    // A user deleted since is still counted, under no name.
    cell(row, names.get(u.user_id) || "");
    cell(row, u.denied, "denied");
  }
  const ips = $("top-ips");
  ips.replaceChildren();
  for (const ip of analytics.most_denied_ips) {
    const row = ips.insertRow();
    row.dataset.ip = ip.ip;
    cell(row, ip.ip);
    cell(row, ip.denied, "denied");
  }
}

/** Stacked bars, one per minute: allowed below, denied above. */
function drawChart(minutes) {
  const svg = $("chart");
  svg.replaceChildren();
  // Drawn in the element's own pixels, so that text keeps its size at any width.
  const width = svg.clientWidth || 720, height = svg.clientHeight || 180;
  const left = 40, bottom = 20, top = 10, right = 4;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const most = Math.max(1, ...minutes.map((m) => m.allowed + m.denied));
  const scale = (height - bottom - top) / most;
  const step = (width - left - right) / Math.max(1, minutes.length);
  const add = (name, attributes, text) => {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  add("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" });
  add("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" });
  add("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(most));
  add("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, "0");
  minutes.forEach((m, i) => {
    const x = left + i * step + 1;
    const w = Math.max(1, step - 2);
    const a = m.allowed * scale, d = m.denied * scale;
    const base = height - bottom;
    const label = m.minute.slice(11, 16) + " UTC: " + m.allowed + " allowed, " + m.denied + " denied";
    if (m.allowed > 0) {
      add("rect", { x, y: base - a, width: w, height: a, class: "bar-allowed" })
        .appendChild(document.createElementNS(SVG, "title")).textContent = label;
    }
    if (m.denied > 0) {
      add("rect", { x, y: base - a - d, width: w, height: d, class: "bar-denied" })
        .appendChild(document.createElementNS(SVG, "title")).textContent = label;
    }
    const last = i === minutes.length - 1;
    if (i % 10 === 0 || last) {
      const anchor = last ? { x: x + w, "text-anchor": "end" } : { x: x + w / 2, "text-anchor": "middle" };
      add("text", { ...anchor, y: height - 5 }, m.minute.slice(11, 16) + (last ? " UTC" : ""));
    }
  });
}

/** `9m 59s`, `1h 5m`, `2d 3h`. */
function timeLeft(ms) {
  const s = Math.ceil(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function drawBlocks(blocks) {
  const body = $("blocks");
  body.replaceChildren();
  for (const b of blocks) {
    const row = body.insertRow();
    row.dataset.ip = b.ip;
    cell(row, b.ip);
    cell(row, b.reason);
    cell(row, timeLeft(b.expires_in_ms));
    row.insertCell().appendChild(button("Unblock", "unblock", b.ip));
  }
}

/** A policy's text form: `sliding:100:1m`, `token:100:10:1s`. */
function policyText(p) {
  if (!p || !p.algorithm) return "?";
  if (p.algorithm === "token") return ["token", p.capacity, p.rate, p.period].join(":");
  return [p.algorithm, p.limit, p.window].join(":");
}

/** The JSON of a policy's text form (the gateway checks the figures). */
function policyJson(text) {
  const parts = text.trim().split(":");
  const number = (s) => (/^\d+$/.test(s) ? Number(s) : s);
  if (parts[0] === "token" && parts.length === 4) {
    return { algorithm: "token", capacity: number(parts[1]), rate: number(parts[2]), period: parts[3] };
  }
  if ((parts[0] === "fixed" || parts[0] === "sliding") && parts.length === 3) {
    return { algorithm: parts[0], limit: number(parts[1]), window: parts[2] };
  }
  return null;
}

function drawUsers(users, analytics) {
  const body = $("users");
  // Someone is typing a limit: leave the table as it is until they are done.
  if (body.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
  const counts = (w) => new Map(w.users.map((u) => [u.user_id, u]));
  const [minute, hour] = analytics.windows.map(counts);
  const usage = (map, id) => {
    const c = map.get(id);
    return c ? c.allowed + " allowed, " + c.denied + " denied" : "0 allowed, 0 denied";
  };
  body.replaceChildren();
  for (const u of users) {
    const row = body.insertRow();
    row.dataset.userId = String(u.id);
    cell(row, u.id);
    cell(row, u.username);
    cell(row, u.role);
    cell(row, policyText(u.rate_limit) + (u.rate_limit.source === "default" ? " (default)" : ""), "limit");
    cell(row, usage(minute, u.id), "minute");
    cell(row, usage(hour, u.id), "hour");
    const input = document.createElement("input");
    input.className = "new-limit";
    input.placeholder = policyText(u.rate_limit);
    input.dataset.userId = String(u.id);
    const edit = row.insertCell();
    edit.appendChild(input);
    edit.appendChild(button("Set", "set-limit", u.id));
    edit.appendChild(button("Default", "default-limit", u.id));
    const actions = row.insertCell();
    actions.appendChild(button("Rotate key", "rotate", u.id));
    actions.appendChild(button(armed.has(u.id) ? "Confirm delete" : "Delete", "delete", u.id, "danger"));
  }
}

/** Runs an action, shows what went wrong, and reads everything again. */
async function act(work) {
  try {
    await work();
    showError("");
  } catch (e) {
    failed(e);
  }
  await refresh();
}

const actions = {
  unblock: (ip) => act(() => api("DELETE", "/blocks/" + encodeURIComponent(ip))),
  "set-limit": (id) => act(async () => {
    const input = document.querySelector('input.new-limit[data-user-id="' + id + '"]');
    const policy = policyJson(input.value);
    if (!policy) {
      throw new ApiError(400, "write a limit as fixed:LIMIT:WINDOW, sliding:LIMIT:WINDOW or token:CAPACITY:RATE:PERIOD");
    }
    await api("PUT", "/rate_limits/" + id, policy);
    input.value = "";
    input.blur();
    showNotice("user " + id + ": limit " + policyText(policy));
  }),
  "default-limit": (id) => act(async () => {
    await api("DELETE", "/rate_limits/" + id);
    showNotice("user " + id + ": the default limit");
  }),
  rotate: (id) => act(async () => {
    const user = await api("POST", "/users/" + id + "/api_key");
    showNotice("New API key of " + user.username + " (shown once): " + user.api_key);
  }),
  delete: (id) => {
    const n = Number(id);
    if (!armed.has(n)) {
      armed.add(n);
      setTimeout(() => armed.delete(n), 10000);
      return refresh();
    }
    armed.delete(n);
    return act(async () => {
      await api("DELETE", "/users/" + id);
      showNotice("user " + id + " deleted");
    });
  },
};

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(STORAGE, $("key").value.trim());
    $("key").value = "";
    showError("");
    refresh();
  });
  $("sign-out").addEventListener("click", () => signOut(true));
  $("block-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const ip = $("block-ip").value.trim();
    const duration = $("block-duration").value.trim();
    act(async () => {
      await api("PUT", "/blocks/" + encodeURIComponent(ip), { duration });
      $("block-ip").value = "";
    });
  });
  document.body.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (target && actions[target.dataset.action]) {
      actions[target.dataset.action](target.dataset.value);
    }
  });
  refresh();
});
