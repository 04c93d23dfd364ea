// The local web channel: plain JavaScript, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const list = $("messages");
const nameBox = $("name");
const commandBox = $("command");
const nodes = new Map(); // message id -> element
let source = null;

nameBox.value = localStorage.getItem("tierbot.name") || "";
nameBox.addEventListener("change", () => {
  localStorage.setItem("tierbot.name", nameBox.value.trim());
  reload();
});

function me() { return nameBox.value.trim(); }

function elapsed(msg) {
  if (!msg.started_at) return "";
  const start = Date.parse(msg.started_at);
  const end = msg.finished_at ? Date.parse(msg.finished_at) : Date.now();
  return ` · ${Math.max(0, Math.round((end - start) / 1000))} s`;
}

function statusText(msg) {
  switch (msg.state) {
    case "queued": return "⏳ queued";
    case "running": return `⚙️ running${elapsed(msg)}` + (msg.detail ? ` · ${msg.detail}` : "");
    case "done": return `✔ done${elapsed(msg)}`;
    case "failed": return `✖ failed${msg.detail ? ": " + msg.detail : ""}`;
    case "interrupted": return `↻ ${msg.detail || "interrupted by a restart"}`;
    default: return "";
  }
}

function render(msg) {
  const el = document.createElement("div");
  el.className = "msg" + (msg.private ? " private" : "") + (msg.error ? " error" : "");
  el.dataset.id = msg.id;
  if (msg.asset_id) el.dataset.asset = msg.asset_id;
  const head = document.createElement("div");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = msg.author;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = new Date(msg.at).toLocaleTimeString();
  head.append(who, when);
  el.append(head);
  if (msg.private) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = "only you can see this";
    el.append(note);
  }
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = msg.text;
  el.append(text);
  for (const file of msg.files) {
    const link = document.createElement("a");
    link.href = file.page;
    link.title = "asset page";
    let media;
    if (file.mime.startsWith("video/")) {
      media = document.createElement("video");
      media.controls = true;
      media.preload = "metadata";
      media.src = file.url;
      el.append(media);
      link.textContent = `asset ${file.asset_id}`;
      el.append(link);
    } else {
      media = document.createElement("img");
      media.src = file.url;
      media.alt = msg.text.split("\n")[0];
      link.append(media);
      el.append(link);
    }
    media.className = "media";
  }
  if (msg.state) {
    const status = document.createElement("div");
    status.className = "status " + msg.state;
    status.textContent = statusText(msg);
    el.append(status);
  }
  if (msg.reactions && msg.reactions.length) {
    const chips = document.createElement("div");
    chips.className = "chips";
    for (const emoji of msg.reactions) {
      const chip = document.createElement("button");
      chip.className = "chip";
      chip.type = "button";
      chip.textContent = emoji;
      chip.title = `react ${emoji}`;
      chip.addEventListener("click", () => react(msg.id, emoji, chip));
      chips.append(chip);
    }
    el.append(chips);
  }
  const thread = document.createElement("div");
  thread.className = "thread";
  thread.hidden = true;
  el.append(thread);
  el._msg = msg;
  return el;
}

function place(msg) {
  const el = render(msg);
  const old = nodes.get(msg.id);
  if (old) {
    const thread = old.querySelector(":scope > .thread");
    el.replaceChild(thread, el.querySelector(":scope > .thread"));
    old.replaceWith(el);
  } else {
    const root = msg.thread_root && nodes.get(msg.thread_root);
    if (root) {
      const thread = root.querySelector(":scope > .thread");
      thread.hidden = false;
      thread.append(el);
    } else {
      list.append(el);
    }
  }
  nodes.set(msg.id, el);
  list.scrollTop = list.scrollHeight;
}

function localNotice(text) {
  place({ id: `local-${Date.now()}`, at: new Date().toISOString(), author: "tierbot", text,
          files: [], reactions: [], private: true, error: true });
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status === 401 && askToken()) return api(path, body);
  if (!response.ok) {
    const data = await response.json().catch(() => ({ error: response.statusText }));
    localNotice(data.error || `the bot answered ${response.status}`);
  }
  return response;
}

function askToken() {
  const token = window.prompt("This tierbot asks for its web token (TIERBOT_WEB_TOKEN):");
  if (!token) return false;
  document.cookie = `tierbot_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  return true;
}

function eventId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

async function react(messageId, emoji, chip) {
  if (!me()) { localNotice("set your name first (top right)"); nameBox.focus(); return; }
  chip.disabled = true;
  try {
    await api("/api/reactions", { name: me(), message_id: messageId, emoji, event_id: eventId() });
  } finally {
    setTimeout(() => { chip.disabled = false; }, 800);
  }
}

const fileBox = $("attachment");
const attachedChip = $("attached");

function showAttachment() {
  const file = fileBox.files[0];
  attachedChip.hidden = !file;
  attachedChip.textContent = file ? `📎 ${file.name} ✕` : "";
}
fileBox.addEventListener("change", showAttachment);
attachedChip.addEventListener("click", () => { fileBox.value = ""; showAttachment(); });

// The file travels as base64, so the bot sees its exact bytes (and can say if it is not UTF-8).
async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = commandBox.value.trim();
  if (!text) return;
  if (!me()) { localNotice("set your name first (top right)"); nameBox.focus(); return; }
  const body = { name: me(), text };
  const file = fileBox.files[0];
  if (file) body.attachment = await base64Of(file);
  commandBox.value = "";
  fileBox.value = "";
  showAttachment();
  await api("/api/commands", body);
});

async function history() {
  const response = await fetch(`/api/messages?name=${encodeURIComponent(me())}`);
  if (response.status === 401) { return askToken() ? history() : null; }
  return (await response.json()).messages;
}

async function reload() {
  const messages = await history();
  if (!messages) return;
  list.textContent = "";
  nodes.clear();
  for (const msg of messages) place(msg);
  connect();
}

function connect() {
  let down = false;
  if (source) source.close();
  source = new EventSource(`/api/events?name=${encodeURIComponent(me())}`);
  source.addEventListener("open", async () => {
    $("live").className = "live on";
    if (down) { // catch up on what was posted while the stream was down
      down = false;
      for (const msg of (await history()) || []) place(msg);
    }
  });
  source.addEventListener("error", () => { $("live").className = "live off"; down = true; });
  source.addEventListener("message", (e) => place(JSON.parse(e.data)));
  source.addEventListener("update", (e) => place(JSON.parse(e.data)));
}

// Running status lines tick their elapsed time locally between server updates.
setInterval(() => {
  for (const el of nodes.values()) {
    if (el._msg && el._msg.state === "running") {
      el.querySelector(":scope > .status").textContent = statusText(el._msg);
    }
  }
}, 1000);

reload();
