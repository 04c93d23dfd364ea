// The canvas on an image's asset page: paint the region an edit may change, say what to
// change, Send. The page posts `/tierbot edit <id> <instruction> --mask` to the channel's
// endpoint, as the channel's name, with mask.png at the image's natural size (white where
// painted, black elsewhere), then opens the channel, where the edit lands in the thread.
"use strict";

const $ = (id) => document.getElementById(id);
const box = $("canvas");
const image = $("canvas-image");
const paint = $("paint");
const form = $("region-edit");
const nameBox = $("canvas-name");
const instruction = $("instruction");
const sizeBox = $("brush-size");
const note = $("canvas-note");
const PAINT = "#ff2d7a"; // shown at the canvas's opacity (style.css): translucent

// Every stroke in fractions of the image (0..1), so a painting survives a resize and scales
// to the natural size: {tool: "brush" | "eraser", size, points: [[x, y], ...]},
// {tool: "rect", x, y, w, h}, or {tool: "clear"} (undo brings back what it cleared).
const strokes = [];
let current = null; // the stroke being drawn, while the pointer is down
// What was last sent from this page (kept for this tab): back from the channel, e.g. after
// a refusal, the painting and the words are still there to fix and send again.
const kept = `tierbot.canvas.${box.dataset.asset}`;
try {
  const last = JSON.parse(sessionStorage.getItem(kept) || "null");
  if (last) {
    strokes.push(...last.strokes);
    instruction.value = last.instruction;
  }
} catch { sessionStorage.removeItem(kept); }

nameBox.value = localStorage.getItem("tierbot.name") || "";
nameBox.addEventListener("change", () => {
  localStorage.setItem("tierbot.name", nameBox.value.trim());
});

// The strokes that show: those since the last clear, and the one being drawn.
function shown() {
  const all = current ? [...strokes, current] : strokes;
  return all.slice(all.map((s) => s.tool).lastIndexOf("clear") + 1);
}

// Draw the strokes that show on `target` (width × height px) in `colour`.
function draw(target, width, height, colour) {
  const c = target.getContext("2d");
  c.clearRect(0, 0, width, height);
  c.fillStyle = c.strokeStyle = colour;
  c.lineCap = c.lineJoin = "round";
  for (const s of shown()) {
    c.globalCompositeOperation = s.tool === "eraser" ? "destination-out" : "source-over";
    c.beginPath();
    if (s.tool === "rect") {
      c.rect(s.x * width, s.y * height, s.w * width, s.h * height);
      c.fill();
    } else if (s.points.length === 1) { // a dot: a tap or a click
      c.arc(s.points[0][0] * width, s.points[0][1] * height, s.size * width / 2, 0, 2 * Math.PI);
      c.fill();
    } else {
      c.lineWidth = s.size * width;
      for (const [x, y] of s.points) c.lineTo(x * width, y * height);
      c.stroke();
    }
  }
  c.globalCompositeOperation = "source-over";
}

function redraw() { draw(paint, paint.width, paint.height, PAINT); }

// After each change: undo while there are strokes, clear while something shows.
function changed() {
  redraw();
  $("undo").disabled = !strokes.length;
  $("clear").disabled = !painted();
}

// Whether anything is painted (what shows on the canvas, erasing included).
function painted() {
  if (!paint.width || !paint.height) return false;
  const pixels = paint.getContext("2d").getImageData(0, 0, paint.width, paint.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
  return false;
}

// The canvas's pixels match the image as shown (sharp on high-density screens too).
function fit() {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(image.clientWidth * ratio);
  const height = Math.round(image.clientHeight * ratio);
  if (paint.width !== width || paint.height !== height) {
    paint.width = width;
    paint.height = height;
  }
  changed();
}
new ResizeObserver(fit).observe(image);

function at(event) {
  const r = paint.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientX - r.left) / r.width), clamp((event.clientY - r.top) / r.height)];
}

// Mouse, pen and touch alike (pointer events; style.css turns off touch scrolling here).
paint.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || current) return;
  event.preventDefault();
  paint.setPointerCapture(event.pointerId);
  const [x, y] = at(event);
  const tool = form.elements.tool.value;
  current = tool === "rect"
    ? { tool, x, y, w: 0, h: 0, start: [x, y] }
    : { tool, size: Number(sizeBox.value) / paint.getBoundingClientRect().width, points: [[x, y]] };
  redraw();
});

paint.addEventListener("pointermove", (event) => {
  if (!current) return;
  if (current.tool === "rect") {
    const [x, y] = at(event);
    const [x0, y0] = current.start;
    Object.assign(current, {
      x: Math.min(x, x0), y: Math.min(y, y0), w: Math.abs(x - x0), h: Math.abs(y - y0),
    });
  } else {
    const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const move of moves.length ? moves : [event]) current.points.push(at(move));
  }
  redraw();
});

paint.addEventListener("pointerup", () => {
  if (!current) return;
  if (current.tool !== "rect" || (current.w > 0 && current.h > 0)) strokes.push(current);
  current = null;
  changed();
});
paint.addEventListener("pointercancel", () => { current = null; redraw(); });

function undo() {
  strokes.pop();
  changed();
}
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => {
  strokes.push({ tool: "clear" });
  changed();
});
document.addEventListener("keydown", (event) => {
  const typing = event.target.matches("input[type=text], input:not([type]), textarea");
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !event.shiftKey
      && !typing) {
    event.preventDefault();
    undo();
  }
});

// The mask at the image's natural size: white where painted, black elsewhere, as a PNG.
function mask() {
  const width = Number(box.dataset.width) || image.naturalWidth;
  const height = Number(box.dataset.height) || image.naturalHeight;
  const sheet = document.createElement("canvas");
  sheet.width = width;
  sheet.height = height;
  draw(sheet, width, height, "#fff");
  const c = sheet.getContext("2d");
  c.globalCompositeOperation = "destination-over";
  c.fillStyle = "#000";
  c.fillRect(0, 0, width, height);
  return new Promise((resolve) => sheet.toBlob(resolve, "image/png"));
}

function say(text, field) {
  note.className = "canvas-note error";
  note.textContent = text;
  if (field) field.focus();
}

function eventId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = nameBox.value.trim();
  const text = instruction.value.trim();
  if (!name) return say("set your name first (the channel's name: who asks for the edit)", nameBox);
  if (!painted()) return say("paint the area to change first: brush or box over the image");
  if (!text) return say("say what to change in the painted area", instruction);
  localStorage.setItem("tierbot.name", name);
  const send = $("send-edit");
  send.disabled = true;
  note.className = "canvas-note";
  note.textContent = "sending…";
  const body = new FormData();
  body.append("name", name);
  body.append("text", `${box.dataset.command} ${text} --mask`);
  body.append("event_id", eventId());
  const file = await mask();
  if (!file) {
    send.disabled = false;
    return say("this browser could not make the mask at the image's size; try another browser");
  }
  body.append("file", file, "mask.png");
  let response = null;
  try {
    response = await fetch("/api/commands", { method: "POST", body });
  } catch (error) {
    send.disabled = false;
    return say(`the bot could not be reached (${error.message}); try again`);
  }
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    send.disabled = false;
    return say(answer.error || `the bot answered ${response.status}`);
  }
  sessionStorage.setItem(kept, JSON.stringify({ strokes: shown(), instruction: text }));
  // The channel brings the reply to this command into view (see app.js).
  sessionStorage.setItem("tierbot.sent", String(answer.message_id || 1));
  note.textContent = "sent — see the channel: ";
  const link = document.createElement("a");
  link.href = "/";
  link.textContent = "open it";
  note.append(link);
  window.location.assign("/");
});

// Back from the channel with the page as it was left (the browser kept it): ready again.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  $("send-edit").disabled = false;
  note.textContent = "";
});
