// The local web channel: plain JavaScript, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const list = $("messages");
const nameBox = $("name");
const commandBox = $("command");
const nodes = new Map(); // message id -> element
const jump = $("jump");
let source = null;

// Where new messages show. The view follows the newest message while the person is at the
// bottom. A reply to the person's own command or chip (the server names them in `by`) is
// brought into view wherever it lands, even in the thread of an old grid, unless they have
// scrolled by hand since; anything else that lands out of view gets the jump button
// ("new reply ↑"). Images and videos load after they are placed, so the view is put right
// again when each one has its size.
let follow = true;   // the person is at the bottom: keep the newest message in view
let handAt = 0;      // when the person last scrolled by hand (performance.now())
let actedAt = 0;     // when the person last sent a command or clicked a chip
let focus = null;    // {el, at}: a message being shown, kept in view while its media load
let unseen = null;   // the newest message that landed out of view (the jump button's target)
// A command sent from an asset page's canvas (canvas.js) just before this page opened: its
// echo's id. Its replies are brought into view as if it had been typed here.
let sentFrom = Number(sessionStorage.getItem("tierbot.sent")) || 0;
sessionStorage.removeItem("tierbot.sent");
if (sentFrom) actedAt = performance.now();

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

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 48;
}

function toBottom() { list.scrollTop = list.scrollHeight; }

function visible(el) {
  const r = el.getBoundingClientRect();
  const v = list.getBoundingClientRect();
  return r.bottom > v.top && r.top < v.bottom && el.offsetParent !== null;
}

function openThreads(el) {
  for (let t = el.parentElement.closest(".thread"); t; t = t.parentElement.closest(".thread")) {
    t.hidden = false;
  }
}

// Scroll as little as needed to show the whole message (its top if it is taller than the view).
function bringIntoView(el) {
  openThreads(el);
  const r = el.getBoundingClientRect();
  const v = list.getBoundingClientRect();
  const pad = 12;
  if (r.top < v.top + pad || r.height > v.height - 2 * pad) {
    list.scrollTop += r.top - v.top - pad;
  } else if (r.bottom > v.bottom - pad) {
    list.scrollTop += r.bottom - v.bottom + pad;
  }
  if (unseen === el) hideJump();
}

function show(el) {
  focus = { el, at: performance.now() };
  bringIntoView(el);
}

// A picture or video got its size: put the view right again.
function settle() {
  if (focus && handAt < focus.at && focus.el.isConnected) bringIntoView(focus.el);
  else if (follow) toBottom();
}

function showJump(el) {
  unseen = el;
  const above = el.getBoundingClientRect().top < list.getBoundingClientRect().top;
  const what = el.parentElement.closest(".thread") ? "new reply" : "new message";
  jump.textContent = `${what} ${above ? "↑" : "↓"}`;
  jump.hidden = false;
}

function hideJump() { unseen = null; jump.hidden = true; }

jump.addEventListener("click", () => {
  if (unseen) show(unseen);
  hideJump();
});

function byHand() { handAt = performance.now(); focus = null; }
list.addEventListener("wheel", byHand, { passive: true });
list.addEventListener("touchmove", byHand, { passive: true });
list.addEventListener("pointerdown", (e) => { if (e.target === list) byHand(); }); // scrollbar
document.addEventListener("keydown", (e) => {
  const keys = ["PageUp", "PageDown", "Home", "End", "ArrowUp", "ArrowDown", " "];
  if (keys.includes(e.key) && !e.target.closest("input, textarea, button")) byHand();
});
list.addEventListener("scroll", () => {
  follow = nearBottom();
  if (unseen && visible(unseen)) hideJump();
});

// A new message: show it, follow it, or point at it (see the comment at the top).
function arrived(el, msg) {
  let top = el;
  while (top && top.parentElement !== list) top = top.parentElement.closest(".msg");
  if (msg.by && msg.by === me() && actedAt && handAt < actedAt) show(el);
  else if (follow && top === list.lastElementChild) toBottom();
  else if (!visible(el)) showJump(el);
}

function statusText(msg) {
  switch (msg.state) {
    case "queued": return "⏳ queued";
    case "running": return `⚙️ running${elapsed(msg)}` + (msg.detail ? ` · ${msg.detail}` : "");
    case "done": return `✔ done${elapsed(msg)}`;
    case "failed": return `✖ failed${msg.detail ? ": " + msg.detail : ""}`;
    case "cancelled": return "🛑 cancelled";
    case "interrupted": return `↻ ${msg.detail || "interrupted by a restart"}`;
    default: return "";
  }
}

function shortLabel(label) {
  return label.replace(/^make (an? )?/, "").replace(/ the grid$/, "");
}

function render(msg) {
  const el = document.createElement("div");
  el.className = "msg" + (msg.kind ? ` ${msg.kind}` : "") + (msg.private ? " private" : "")
    + (msg.error ? " error" : "");
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
  // A stitched sequence: the stitch plays first, its shots follow small, in stitch order.
  const sequence = msg.files.length > 1 && msg.files[0].stage === "sequence";
  let strip = null;
  for (const [i, file] of msg.files.entries()) {
    if (sequence && i > 0) {
      if (!strip) {
        strip = document.createElement("div");
        strip.className = "shots";
        el.append(strip);
      }
      strip.append(shot(file));
      continue;
    }
    const link = document.createElement("a");
    link.href = file.page;
    link.title = "asset page";
    let media;
    if (file.mime.startsWith("video/")) {
      media = document.createElement("video");
      media.controls = true;
      media.preload = "metadata";
      media.addEventListener("loadedmetadata", settle, { once: true });
      media.src = file.url;
      el.append(media);
      link.textContent = `asset ${file.asset_id}`;
      el.append(link);
    } else {
      media = document.createElement("img");
      media.addEventListener("load", settle, { once: true });
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
  const labelled = msg.chips || (msg.reactions || []).map((emoji) => ({ emoji, label: "" }));
  if (labelled.length) {
    const chips = document.createElement("div");
    chips.className = "chips";
    for (const { emoji, label } of labelled) {
      const chip = document.createElement("button");
      chip.className = "chip";
      chip.type = "button";
      const icon = document.createElement("span");
      icon.className = "emoji";
      icon.textContent = emoji;
      icon.setAttribute("aria-hidden", "true");
      chip.append(icon);
      // Numbers read as themselves; the other chips also say what they do in a word, so
      // they mean something without an emoji font.
      const word = label && !label.startsWith("take draft") ? shortLabel(label) : "";
      if (word) {
        const span = document.createElement("span");
        span.className = "word";
        span.textContent = word;
        chip.append(span);
      }
      chip.title = label ? `${emoji} ${label}` : `react ${emoji}`;
      chip.setAttribute("aria-label", label || `react ${emoji}`);
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

// One shot of a sequence in its message: a small playable video, and its number linking
// to its page (its words as the tooltip).
function shot(file) {
  const figure = document.createElement("figure");
  figure.className = "shot";
  const video = document.createElement("video");
  video.className = "media shot";
  video.controls = true;
  video.muted = true;
  video.preload = "metadata";
  video.addEventListener("loadedmetadata", settle, { once: true });
  video.src = file.url;
  const caption = document.createElement("figcaption");
  const link = document.createElement("a");
  link.href = file.page;
  link.textContent = `${file.label || "shot"} · ${file.asset_id}`;
  if (file.title) link.title = file.title;
  caption.append(link);
  figure.append(video, caption);
  return figure;
}

// The message as shown, without what only the live event carries.
function same(a, b) {
  const { by: _a, ...left } = a;
  const { by: _b, ...right } = b;
  return JSON.stringify(left) === JSON.stringify(right);
}

// Put a message in the page (new, or an update of one shown); returns it if it is new.
function place(msg) {
  const old = nodes.get(msg.id);
  if (old && same(old._msg, msg)) return null;
  const el = render(msg);
  if (old) {
    const thread = old.querySelector(":scope > .thread");
    el.replaceChild(thread, el.querySelector(":scope > .thread"));
    old.replaceWith(el);
    if (focus && focus.el === old) focus.el = el;
    if (unseen === old) unseen = el;
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
  return old ? null : el;
}

function receive(msg) {
  const el = place(msg);
  if (el) arrived(el, msg);
}

function localNotice(text) {
  actedAt = performance.now();
  receive({ id: `local-${Date.now()}`, at: new Date().toISOString(), author: "tierbot", text,
            files: [], reactions: [], private: true, error: true, by: me() });
}

// POST a JSON object, or a FormData (a command with its files, as multipart/form-data).
// Returns the response, or null if the bot could not be reached; a refusal is shown.
async function api(path, body) {
  const form = body instanceof FormData;
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: form ? {} : { "Content-Type": "application/json" },
      body: form ? body : JSON.stringify(body),
    });
  } catch (error) {
    localNotice(`the bot could not be reached (${error.message}); try again`);
    return null;
  }
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
  actedAt = performance.now();
  chip.disabled = true;
  try {
    await api("/api/reactions", { name: me(), message_id: messageId, emoji, event_id: eventId() });
  } finally {
    setTimeout(() => { chip.disabled = false; }, 800);
  }
}

// 📎: the files sent with the next command (reference images, a fixed version, a calendar's
// CSV). Each pick adds to the list; each chip removes its file; sending clears the list.
// The bot checks the images; the page only keeps to the limits the server set.
const fileBox = $("attachment");
const attachedList = $("attached");
const maxFiles = Number(fileBox.dataset.maxFiles) || 9;
const maxBytes = Number(fileBox.dataset.maxBytes) || 20e6;
let attached = [];

// Decimal KB and MB, as the bot's own messages say them; `over` rounds up, so a file
// refused as too big never reads as the limit itself.
function size(bytes, over = false) {
  const round = over ? Math.ceil : Math.floor;
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${round(bytes / 1000)} KB`;
  return `${(round(bytes / 1e5) / 10).toFixed(1).replace(/\.0$/, "")} MB`;
}

function showAttached() {
  attachedList.textContent = "";
  attached.forEach((file, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip file";
    chip.title = `remove ${file.name}`;
    chip.setAttribute("aria-label", `remove ${file.name} (${size(file.size)})`);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `📎 ${file.name}`;
    const bytes = document.createElement("span");
    bytes.className = "size";
    bytes.textContent = `${size(file.size)} ✕`;
    chip.append(name, bytes);
    chip.addEventListener("click", () => {
      attached.splice(i, 1);
      showAttached();
      commandBox.focus();
    });
    attachedList.append(chip);
  });
  attachedList.hidden = !attached.length;
}

fileBox.addEventListener("change", () => {
  for (const file of fileBox.files) {
    if (attached.length >= maxFiles) {
      localNotice(`${file.name} was not attached: a command takes at most ${maxFiles} files`);
    } else if (file.size > maxBytes) {
      localNotice(`${file.name} is ${size(file.size, true)}; files up to ${size(maxBytes)} are accepted`);
    } else {
      attached.push(file);
    }
  }
  fileBox.value = ""; // the same file may be picked again
  showAttached();
});

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = commandBox.value.trim();
  if (!text) return;
  if (!me()) { localNotice("set your name first (top right)"); nameBox.focus(); return; }
  const files = attached;
  const body = new FormData();
  body.append("name", me());
  body.append("text", text);
  body.append("event_id", eventId());
  for (const file of files) body.append("file", file, file.name);
  commandBox.value = "";
  attached = [];
  showAttached();
  actedAt = performance.now();
  const response = await api("/api/commands", body);
  // Refused before the bot took it (a bad name, a file too big): give it back to fix.
  if (response && !response.ok && !commandBox.value && !attached.length) {
    commandBox.value = text;
    attached = files;
    showAttached();
  }
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
  hideJump();
  focus = null;
  for (const msg of messages) place(msg);
  follow = true;
  toBottom();
  // Sent from the canvas: the bot's newest answer to it, if one came before this page did.
  const answers = messages.filter((m) => sentFrom && m.id > sentFrom && m.author === "tierbot");
  if (answers.length) show(nodes.get(answers[answers.length - 1].id));
  sentFrom = 0;
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
      for (const msg of (await history()) || []) receive(msg);
    }
  });
  source.addEventListener("error", () => { $("live").className = "live off"; down = true; });
  source.addEventListener("message", (e) => receive(JSON.parse(e.data)));
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
