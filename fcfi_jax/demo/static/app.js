// FCFI demo page. Plain JS, no build step: talks to the JSON API of fcfi_jax/demo/server.py.
//
// Coordinates: both canvases have an intrinsic size equal to the image (naturalWidth x naturalHeight)
// and are stretched by CSS over the displayed <img>. A pointer position is mapped to image pixels with
// the image's getBoundingClientRect (which includes CSS transforms and layout scaling), so clicks and
// the mask land on the right pixels for any image size, page zoom or devicePixelRatio.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), mode: $("mode"), undo: $("undo"), reset: $("reset"), opacity: $("opacity"),
  download: $("download"), status: $("status"), latency: $("latency"), drop: $("drop"), stage: $("stage"),
  image: $("image"), mask: $("mask"), clicks: $("clicks"),
};
const MASK_RGB = [30, 144, 255];   // mask fill colour (alpha comes from the opacity slider)
const MARKER_CSS_PX = 6;           // click marker radius on screen, whatever the image scale

// Everything the page knows; exposed as window.fcfiDemo for debugging and the browser test.
const state = { config: null, session: null, width: 0, height: 0, clicks: [], maskPng: null,
                area: 0, negativeMode: false, busy: false, lastLatency: null };
window.fcfiDemo = state;

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = kind;
}

// POST/GET helper: returns parsed JSON, throws Error(server's one-line message) on any failure.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`cannot reach the demo server (${e.message}); is it still running?`);
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status} ${response.statusText}`);
  return body;
}

const postJson = (path, obj) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(obj) });

function updateControls() {
  const has = state.session !== null;
  els.undo.disabled = !has || state.busy || state.clicks.length === 0;
  els.reset.disabled = !has || state.busy || state.clicks.length === 0;
  els.download.classList.toggle("disabled", !has);
  els.download.href = has ? `api/mask.png?session=${state.session}` : "#";
  document.body.classList.toggle("busy", state.busy);
}

// ---- image upload --------------------------------------------------------------------------------

async function openFile(file) {
  if (!file) return;
  if (state.busy) return setStatus("Busy: wait for the current request to finish.", "busy");
  const limit = state.config ? state.config.max_upload_bytes : Infinity;
  if (file.size > limit) {
    return setStatus(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ` +
                     `${(limit / 2 ** 20).toFixed(1)} MB.`, "error");
  }
  state.busy = true; updateControls();
  setStatus(`Uploading ${file.name} …`, "busy");
  try {
    const info = await api("api/image", { method: "POST", body: file,
                                          headers: { "Content-Type": "application/octet-stream" } });
    await showImage(info);
    setStatus(`${file.name}: ${info.width}×${info.height}. Left click on the object, right click on the ` +
              "background (the first click compiles the model: ~30 s on a CPU).");
  } catch (e) {
    setStatus(`Cannot open ${file.name}: ${e.message}`, "error");
  } finally {
    state.busy = false; updateControls();
  }
}

// Show the server's decoded image (exactly the pixels the model sees) and size both canvases to it.
function showImage(info) {
  return new Promise((resolve, reject) => {
    els.image.onload = () => {
      const w = els.image.naturalWidth, h = els.image.naturalHeight;
      if (w !== info.width || h !== info.height) {
        reject(new Error(`the browser decoded ${w}×${h}, the server ${info.width}×${info.height}`));
        return;
      }
      Object.assign(state, { session: info.session, width: w, height: h, clicks: [], maskPng: null, area: 0 });
      for (const c of [els.mask, els.clicks]) { c.width = w; c.height = h; }
      els.mask.getContext("2d").clearRect(0, 0, w, h);
      els.stage.hidden = false;
      els.drop.classList.remove("empty");
      els.latency.textContent = "";
      drawClicks();
      resolve();
    };
    els.image.onerror = () => reject(new Error("the browser could not display the decoded image"));
    els.image.src = `api/image.png?session=${info.session}`;
  });
}

// ---- clicks ---------------------------------------------------------------------------------------

// Client (CSS px, viewport) -> integer image pixel (row y, column x), or null outside the image.
function toImagePixel(clientX, clientY) {
  const r = els.image.getBoundingClientRect();
  const x = Math.floor((clientX - r.left) * state.width / r.width);
  const y = Math.floor((clientY - r.top) * state.height / r.height);
  return (x >= 0 && x < state.width && y >= 0 && y < state.height) ? { y, x } : null;
}

async function onPointerDown(event) {
  if (event.button !== 0 && event.button !== 2) return;
  event.preventDefault();
  if (!state.session) return setStatus("Open an image first, then click on it.", "error");
  if (state.busy) return setStatus("Busy: wait for the current prediction to finish.", "busy");
  const p = toImagePixel(event.clientX, event.clientY);
  if (!p) return setStatus("That click is outside the image.", "error");
  const positive = event.button === 0 && !state.negativeMode;
  await send("api/click", { session: state.session, y: p.y, x: p.x, positive },
             `${positive ? "Positive" : "Negative"} click at (y=${p.y}, x=${p.x}) …`);
}

// Run one state-changing request and apply the returned state.
async function send(path, body, busyText) {
  state.busy = true; updateControls();
  setStatus(busyText, "busy");
  const t0 = performance.now();
  try {
    const s = await postJson(path, body);
    const roundTrip = performance.now() - t0;
    await applyState(s);
    const n = s.clicks.length, pos = s.clicks.filter((c) => c[2]).length;
    setStatus(`${n} click${n === 1 ? "" : "s"} (${pos} positive, ${n - pos} negative); mask ${s.area} px.`);
    if (s.latency_ms) {
      state.lastLatency = { ...s.latency_ms, round_trip: roundTrip };
      els.latency.textContent = `Click ${n}: model ${s.latency_ms.model.toFixed(0)} ms, ` +
        `prediction ${s.latency_ms.predict.toFixed(0)} ms, server ${s.latency_ms.server.toFixed(0)} ms, ` +
        `round trip ${roundTrip.toFixed(0)} ms`;
    }
  } catch (e) {
    setStatus(e.message, "error");
    if (/unknown session/.test(e.message)) { state.session = null; }
  } finally {
    state.busy = false; updateControls();
  }
}

function applyState(s) {
  state.clicks = s.clicks; state.area = s.area; state.maskPng = s.mask_png;
  drawClicks();
  return drawMask(s.mask_png);
}

// 0/255 grayscale PNG (base64) -> coloured RGBA on the mask canvas (opacity via CSS).
function drawMask(b64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const ctx = els.mask.getContext("2d");
      ctx.clearRect(0, 0, state.width, state.height);
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, state.width, state.height);
      const px = data.data;
      for (let i = 0; i < px.length; i += 4) {
        const on = px[i] > 127;
        px[i] = MASK_RGB[0]; px[i + 1] = MASK_RGB[1]; px[i + 2] = MASK_RGB[2]; px[i + 3] = on ? 255 : 0;
      }
      ctx.putImageData(data, 0, 0);
      resolve();
    };
    img.onerror = () => reject(new Error("the mask returned by the server could not be decoded"));
    img.src = `data:image/png;base64,${b64}`;
  });
}

// Markers at pixel centres, radius fixed in screen pixels (scaled by the current display size).
function drawClicks() {
  const ctx = els.clicks.getContext("2d");
  ctx.clearRect(0, 0, state.width, state.height);
  const shown = els.image.getBoundingClientRect().width;
  const scale = shown > 0 ? state.width / shown : 1;
  const r = MARKER_CSS_PX * scale;
  for (const [y, x, positive] of state.clicks) {
    ctx.beginPath();
    ctx.arc(x + 0.5, y + 0.5, r, 0, 2 * Math.PI);
    ctx.fillStyle = positive ? "#16a34a" : "#dc2626";
    ctx.fill();
    ctx.lineWidth = 1.5 * scale;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

// ---- controls --------------------------------------------------------------------------------------

function setNegativeMode(on) {
  state.negativeMode = on;
  els.mode.setAttribute("aria-pressed", String(on));
  els.mode.innerHTML = `Left click: <b>${on ? "negative" : "positive"}</b>`;
}

els.clicks.addEventListener("pointerdown", onPointerDown);
els.clicks.addEventListener("contextmenu", (e) => e.preventDefault());
els.drop.addEventListener("pointerdown", (e) => {
  if (!state.session && e.target !== els.clicks) setStatus("Open an image first, then click on it.", "error");
});
els.mode.addEventListener("click", () => setNegativeMode(!state.negativeMode));
els.undo.addEventListener("click", () => send("api/undo", { session: state.session }, "Undo …"));
els.reset.addEventListener("click", () => send("api/reset", { session: state.session }, "Reset …"));
els.opacity.addEventListener("input", () => { els.mask.style.opacity = els.opacity.value; });
els.file.addEventListener("change", () => { openFile(els.file.files[0]); els.file.value = ""; });
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("dragover"); });
}
for (const type of ["dragleave", "drop"]) {
  document.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.remove("dragover"); });
}
document.addEventListener("drop", (e) => openFile(e.dataTransfer.files[0]));
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z" && !els.undo.disabled) { e.preventDefault(); els.undo.click(); }
});
new ResizeObserver(() => { if (state.session) drawClicks(); }).observe(els.image);
els.mask.style.opacity = els.opacity.value;

api("api/config").then((c) => { state.config = c; }).catch((e) => setStatus(e.message, "error"));
updateControls();
