// FCFI demo page. Plain JS, no build step: talks to the JSON API of fcfi_jax/demo/server.py.
//
// Coordinates: #drop is the view. Inside it, #stage holds the <img> at its natural size and the mask canvas
// (intrinsic size = the image's naturalWidth x naturalHeight) on top of it; a CSS transform on #stage,
// translate(tx, ty) scale(s) in the view's own CSS pixels, fits, zooms and pans it. A pointer position is
// mapped to image pixels with the image's getBoundingClientRect (which includes every CSS transform, ours or an
// outer one, and layout scaling), so clicks and the mask land on the right pixels for any image size, zoom,
// pan, page zoom or devicePixelRatio. Click markers are drawn on #clicks, a canvas covering the whole view
// (untransformed) at device resolution, from the same (tx, ty, s), so they stay crisp and of fixed size.
//
// Objects: the server keeps the finished objects of the image (and, for `python -m fcfi_jax.annotate`, saves
// them to the COCO file after every change); each state it returns lists them and carries an id map (pixel
// value = 1 + position in the list) that is coloured here with the same palette as the exported instance PNG.
// Selection is the page's own (state.selected: an object id); rename, delete and finish go to the server.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), mode: $("mode"), undo: $("undo"), reset: $("reset"), opacity: $("opacity"),
  download: $("download"), status: $("status"), latency: $("latency"), drop: $("drop"), stage: $("stage"),
  image: $("image"), mask: $("mask"), clicks: $("clicks"), zoomIn: $("zoom-in"), zoomOut: $("zoom-out"),
  zoomLevel: $("zoom-level"), fit: $("fit"), zoom1: $("zoom-1"), pan: $("pan"), open: $("open"),
  objectsCanvas: $("objects-canvas"), label: $("label"), labelList: $("label-list"), finish: $("finish"),
  autoNeg: $("auto-neg"), overlap: $("overlap"), objects: $("objects"), objectCount: $("object-count"),
  rename: $("rename"), renameApply: $("rename-apply"), del: $("delete"), exportCoco: $("export-coco"),
  exportPng: $("export-png"), exportZip: $("export-zip"), importFile: $("import"), importButton: $("import-button"),
  project: $("project"), prev: $("prev"), next: $("next"), progress: $("progress"), imageName: $("image-name"),
  done: $("done"),
};
const MASK_RGB = [30, 144, 255];   // mask fill colour (alpha comes from the opacity slider)
const MARKER_CSS_PX = 6;           // click marker radius on screen, whatever the image scale
const ZOOM_STEP = 1.25;            // +/- buttons and keys
const MAX_ZOOM = 32;               // display scale limits: up to 32 screen px per image pixel (or 8x the fit) …
const MIN_ZOOM_OF_FIT = 0.25;      // … down to a quarter of the fitted size

// Everything the page knows; exposed as window.fcfiDemo for debugging and the browser test.
const state = { config: null, session: null, width: 0, height: 0, clicks: [], maskPng: null,
                area: 0, negativeMode: false, busy: false, lastLatency: null, name: "",
                // finished objects [{id, label, area, bbox}], their id map (base64 PNG), the selected object's id,
                // which clicks were automatic negatives, object undo steps, the session's switches
                objects: [], objectsPng: null, selected: null, clickAuto: [], objectUndo: 0,
                allowOverlap: false, autoNegatives: false, saveError: null,
                // image folder (fcfi_jax.annotate): its listing, the image shown (index), done / total
                project: null, projectIndex: null, projectState: null,
                // view: display scale s and offset (tx, ty) of the image in the view (CSS px); fit: follow the
                // window (refit on resize) until the user zooms or pans
                view: { s: 1, tx: 0, ty: 0, fit: true }, panMode: false, spaceDown: false };
window.fcfiDemo = state;

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.title = text;
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
  const has = state.session !== null, idle = has && !state.busy;
  els.undo.disabled = !idle || (state.clicks.length === 0 && state.objectUndo === 0);
  els.reset.disabled = !idle || state.clicks.length === 0;
  els.finish.disabled = !idle || state.clicks.length === 0;
  els.del.disabled = els.renameApply.disabled = els.rename.disabled = !idle || state.selected === null;
  els.download.classList.toggle("disabled", !has);
  els.download.href = has ? `api/mask.png?session=${state.session}` : "#";
  const stem = (state.name || "image").replace(/\.[^.]*$/, "");
  for (const [a, what, name] of [[els.exportCoco, "coco.json", `${stem}.coco.json`],
                                 [els.exportPng, "instances.png", `${stem}_instances.png`],
                                 [els.exportZip, "objects.zip", `${stem}_objects.zip`]]) {
    a.classList.toggle("disabled", !has);
    a.href = has ? `api/export/${what}?session=${state.session}` : "#";
    a.download = name;
  }
  els.importButton.classList.toggle("disabled", !idle);
  document.body.classList.toggle("busy", state.busy);
  for (const b of [els.zoomIn, els.zoomOut, els.fit, els.zoom1, els.pan]) b.disabled = !has;
  if (state.project) {
    const n = state.project.images.length, k = state.projectIndex;
    els.prev.disabled = state.busy || k === null || k <= 0;
    els.next.disabled = state.busy || k === null || k >= n - 1;
    els.done.disabled = !idle;
  }
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
    const info = await api(`api/image?name=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    await showImage(info);
    await syncOptions();
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
      Object.assign(state, { session: info.session, width: w, height: h, clicks: [], maskPng: null, area: 0,
                             name: info.name || "", objects: [], objectsPng: null, selected: null, clickAuto: [],
                             objectUndo: 0 });
      for (const c of [els.mask, els.objectsCanvas]) {
        c.width = w; c.height = h;
        c.getContext("2d").clearRect(0, 0, w, h);
      }
      renderObjects();
      els.stage.style.width = `${w}px`; els.stage.style.height = `${h}px`;
      els.stage.hidden = false;
      els.drop.classList.remove("empty");
      els.latency.textContent = "";
      fitView();
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
  if (state.session && (event.button === 1 || (event.button === 0 && (state.panMode || state.spaceDown)))) {
    return startPan(event);
  }
  if (event.button !== 0 && event.button !== 2) return;
  event.preventDefault();
  // a click on the image ends typing in a field (the label), so that Enter / N and the other keys act again
  if (document.activeElement instanceof HTMLInputElement) document.activeElement.blur();
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
    const auto = s.click_auto.filter((a) => a).length;
    setStatus(s.save_error || (`${n} click${n === 1 ? "" : "s"} (${pos} positive, ${n - pos} negative` +
              `${auto ? `, ${auto} automatic` : ""}); mask ${s.area} px; ${s.objects.length} finished ` +
              `object${s.objects.length === 1 ? "" : "s"}.`), s.save_error ? "error" : "");
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

async function applyState(s) {
  Object.assign(state, { clicks: s.clicks, area: s.area, maskPng: s.mask_png, clickAuto: s.click_auto,
                         objects: s.objects, objectsPng: s.objects_png, objectUndo: s.object_undo_steps,
                         allowOverlap: s.allow_overlap, autoNegatives: s.auto_negatives, saveError: s.save_error,
                         name: s.name });
  if (!s.objects.some((o) => o.id === state.selected)) state.selected = null;
  els.overlap.checked = s.allow_overlap; els.autoNeg.checked = s.auto_negatives;
  if (s.project) { state.projectState = s.project; showProgress(); }
  renderObjects();
  drawClicks();
  await drawObjects();
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

// Markers at pixel centres on the view-sized canvas, radius fixed in CSS pixels, at device resolution.
function drawClicks() {
  const c = els.clicks, cw = els.drop.clientWidth, ch = els.drop.clientHeight;
  const r = els.drop.getBoundingClientRect();
  const outer = els.drop.offsetWidth > 0 ? r.width / els.drop.offsetWidth : 1;   // outer transforms / zoom
  const k = Math.min(4, Math.max(1, (window.devicePixelRatio || 1) * outer));
  const pw = Math.max(1, Math.round(cw * k)), ph = Math.max(1, Math.round(ch * k));
  if (c.width !== pw || c.height !== ph) { c.width = pw; c.height = ph; }
  const ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, pw, ph);
  ctx.setTransform(pw / Math.max(cw, 1), 0, 0, ph / Math.max(ch, 1), 0, 0);
  const { s, tx, ty } = state.view;
  state.clicks.forEach(([y, x, positive], i) => {
    const auto = state.clickAuto[i];   // automatic negative: a hollow red ring
    ctx.beginPath();
    ctx.arc(tx + (x + 0.5) * s, ty + (y + 0.5) * s, MARKER_CSS_PX, 0, 2 * Math.PI);
    ctx.fillStyle = auto ? "#fff" : positive ? "#16a34a" : "#dc2626";
    ctx.fill();
    ctx.lineWidth = auto ? 3 : 1.5;
    ctx.strokeStyle = auto ? "#dc2626" : "#fff";
    ctx.stroke();
  });
}

// ---- objects ---------------------------------------------------------------------------------------

const paletteCss = (k) => {
  const p = state.config && state.config.palette ? state.config.palette[k % 256] : [128, 128, 128];
  return `rgb(${p[0]}, ${p[1]}, ${p[2]})`;
};

// The id map (value = 1 + position) coloured with the palette; the selected object opaque, the others lighter.
function drawObjects() {
  const ctx = els.objectsCanvas.getContext("2d");
  ctx.clearRect(0, 0, state.width, state.height);
  if (!state.objectsPng) return Promise.resolve();
  const sel = state.objects.findIndex((o) => o.id === state.selected) + 1;
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, state.width, state.height), px = data.data;
      const palette = state.config.palette;
      for (let i = 0; i < px.length; i += 4) {
        const v = px[i];
        if (v === 0) { px[i + 3] = 0; continue; }
        const c = palette[v];
        px[i] = c[0]; px[i + 1] = c[1]; px[i + 2] = c[2];
        px[i + 3] = sel === 0 ? 220 : v === sel ? 255 : 110;
      }
      ctx.putImageData(data, 0, 0);
      resolve();
    };
    img.onerror = () => reject(new Error("the object map returned by the server could not be decoded"));
    img.src = `data:image/png;base64,${state.objectsPng}`;
  });
}

function renderObjects() {
  els.objects.replaceChildren(...state.objects.map((o, k) => {
    const li = document.createElement("li");
    li.dataset.id = o.id;
    li.classList.toggle("selected", o.id === state.selected);
    li.title = `object ${k + 1}: ${o.label}, ${o.area} px (click to select)`;
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = paletteCss(k + 1);
    const lbl = document.createElement("span");
    lbl.className = "lbl"; lbl.textContent = `${k + 1}. ${o.label}`;
    const area = document.createElement("span");
    area.className = "area"; area.textContent = `${o.area}`;
    li.append(sw, lbl, area);
    li.addEventListener("click", () => selectObject(o.id === state.selected ? null : o.id));
    return li;
  }));
  els.objectCount.textContent = state.objects.length ? `(${state.objects.length})` : "";
  const sel = state.objects.find((o) => o.id === state.selected);
  if (document.activeElement !== els.rename) els.rename.value = sel ? sel.label : "";
  els.rename.placeholder = sel ? "new label" : "select an object";
  updateControls();
}

function selectObject(id) {
  state.selected = id;
  renderObjects();
  drawObjects();
  const o = state.objects.find((x) => x.id === id);
  if (o) setStatus(`Selected object ${state.objects.indexOf(o) + 1}: ${o.label}, ${o.area} px ` +
                   "(F2: rename, Delete: delete, Esc: deselect).");
}

function selectStep(step) {
  if (!state.objects.length) return;
  const k = state.objects.findIndex((o) => o.id === state.selected);
  const n = state.objects.length, next = k < 0 ? (step > 0 ? 0 : n - 1) : Math.min(n - 1, Math.max(0, k + step));
  selectObject(state.objects[next].id);
}

function finishObject() {
  if (!state.session || state.busy || state.clicks.length === 0) return;
  const label = els.label.value.trim() || (state.config && state.config.default_label) || "object";
  send("api/finish", { session: state.session, label }, `Finishing the object (${label}) …`);
}

function renameObject() {
  if (state.selected === null || state.busy) return;
  send("api/object/update", { session: state.session, id: state.selected, label: els.rename.value },
       "Renaming …");
}

function deleteObject() {
  if (state.selected === null || state.busy) return;
  send("api/object/delete", { session: state.session, id: state.selected }, "Deleting the object …");
}

function setOption(name, value) {
  if (!state.session) return;
  send("api/options", { session: state.session, [name]: value }, "…");
}

// A new session starts with the server's defaults: apply the checkboxes the user has set.
async function syncOptions() {
  if (els.overlap.checked === state.allowOverlap && els.autoNeg.checked === state.autoNegatives) return;
  await applyState(await postJson("api/options", { session: state.session, allow_overlap: els.overlap.checked,
                                                   auto_negatives: els.autoNeg.checked }));
}

async function importCoco(file) {
  if (!file || !state.session || state.busy) return;
  const limit = state.config ? state.config.max_upload_bytes : Infinity;
  if (file.size > limit) return setStatus(`${file.name} is larger than the upload limit.`, "error");
  state.busy = true; updateControls();
  setStatus(`Importing ${file.name} …`, "busy");
  try {
    const s = await api(`api/import?session=${state.session}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/json" } });
    await applyState(s);
    setStatus(s.save_error || `Imported ${s.objects.length} object${s.objects.length === 1 ? "" : "s"} from ` +
              `${file.name} (Ctrl+Z restores the previous ones).`, s.save_error ? "error" : "");
  } catch (e) {
    setStatus(`Cannot import ${file.name}: ${e.message}`, "error");
  } finally {
    state.busy = false; updateControls();
  }
}

// ---- image folder (python -m fcfi_jax.annotate) ------------------------------------------------------

function showProgress() {
  const p = state.projectState;
  if (p) els.progress.textContent = `${p.done}/${p.total} done`;
  if (p && p.image_done !== undefined) els.done.checked = p.image_done;
}

async function openProjectImage(index) {
  if (state.busy) return;
  state.busy = true; state.projectIndex = index; updateControls();
  const name = state.project.images[index].name;
  els.imageName.textContent = `${index + 1}/${state.project.images.length}: ${name}`;
  setStatus(`Opening ${name} …`, "busy");
  try {
    const info = await postJson("api/project/open", { index });
    await showImage(info);
    await applyState(await api(`api/state?session=${info.session}`));
    await syncOptions();
    setStatus(`${name}: ${info.width}×${info.height}, ${state.objects.length} object` +
              `${state.objects.length === 1 ? "" : "s"} so far. Click on an object; Enter finishes it.`);
  } catch (e) {
    state.session = null; state.objects = []; state.clicks = [];
    els.stage.hidden = true; els.drop.classList.add("empty");
    setStatus(e.message, "error");
  } finally {
    state.busy = false; updateControls();
  }
}

async function refreshProject() {
  state.project = await api("api/project");
  state.projectState = { done: state.project.done, total: state.project.total };
  els.progress.textContent = `${state.project.done}/${state.project.total} done`;
}

async function markDone(done, advance) {
  if (!state.session || state.busy) return;
  await send("api/project/done", { session: state.session, done }, done ? "Marking done …" : "…");
  await refreshProject();
  if (!(done && advance)) return;
  const imgs = state.project.images, k = state.projectIndex;
  const order = [...imgs.keys()].slice(k + 1).concat([...imgs.keys()].slice(0, k));
  const next = order.find((i) => !imgs[i].done);
  if (next === undefined) return setStatus(`All ${imgs.length} images are done; the COCO file is saved.`);
  openProjectImage(next);
}

async function startProject() {
  els.project.hidden = false;
  els.open.hidden = true;
  await refreshProject();
  openProjectImage(state.project.start);
}

// ---- view: fit, zoom, pan ------------------------------------------------------------------------------

const fitScale = () => Math.min(els.drop.clientWidth / state.width, els.drop.clientHeight / state.height);

// Keep the image in view: on each axis at least half of the image (or of the view, if smaller) stays visible.
// Loose on purpose: zooming at the pointer keeps the pixel under it fixed, even near an edge of the image.
function clampView() {
  const v = state.view, w = els.drop.clientWidth, h = els.drop.clientHeight;
  const sw = state.width * v.s, sh = state.height * v.s, mx = Math.min(sw, w) / 2, my = Math.min(sh, h) / 2;
  v.tx = Math.min(w - mx, Math.max(mx - sw, v.tx));
  v.ty = Math.min(h - my, Math.max(my - sh, v.ty));
}

function applyView() {
  if (!state.width) return;
  const v = state.view;
  clampView();
  els.stage.style.transform = `translate(${v.tx}px, ${v.ty}px) scale(${v.s})`;
  els.stage.classList.toggle("pixelated", v.s >= 4);
  els.zoomLevel.textContent = `${Math.round(v.s * 100)}%`;
  drawClicks();
}

function fitView() {
  if (!state.width) return;
  const s = fitScale();
  Object.assign(state.view, { s, tx: (els.drop.clientWidth - state.width * s) / 2,
                              ty: (els.drop.clientHeight - state.height * s) / 2, fit: true });
  applyView();
}

// Zoom to scale s keeping the view point (lx, ly) (CSS px, default: the view's centre) over the same image point.
function zoomTo(s, lx = els.drop.clientWidth / 2, ly = els.drop.clientHeight / 2) {
  if (!state.width) return;
  const v = state.view, f = fitScale();
  s = Math.min(Math.max(s, f * MIN_ZOOM_OF_FIT), Math.max(MAX_ZOOM, f * 8));
  v.tx = lx - (lx - v.tx) * s / v.s;
  v.ty = ly - (ly - v.ty) * s / v.s;
  v.s = s; v.fit = false;
  applyView();
}

// Client (viewport) coordinates -> the view's own CSS px (through any outer transform or page zoom).
function toView(clientX, clientY) {
  const r = els.drop.getBoundingClientRect();
  const kx = r.width > 0 ? els.drop.offsetWidth / r.width : 1, ky = r.height > 0 ? els.drop.offsetHeight / r.height : 1;
  return { x: (clientX - r.left) * kx - els.drop.clientLeft, y: (clientY - r.top) * ky - els.drop.clientTop };
}

function onWheel(event) {
  if (!state.session) return;
  event.preventDefault();
  const unit = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? els.drop.clientHeight : 1;
  const p = toView(event.clientX, event.clientY);
  zoomTo(state.view.s * Math.exp(-event.deltaY * unit * 0.002), p.x, p.y);
}

let pan = null;   // {id, x, y}: the pointer dragging the view and its last position (view CSS px)

function startPan(event) {
  event.preventDefault();
  const p = toView(event.clientX, event.clientY);
  pan = { id: event.pointerId, x: p.x, y: p.y };
  els.clicks.setPointerCapture(event.pointerId);
  els.drop.classList.add("panning");
}

function onPointerMove(event) {
  if (!pan || event.pointerId !== pan.id) return;
  const p = toView(event.clientX, event.clientY), v = state.view;
  v.tx += p.x - pan.x; v.ty += p.y - pan.y; v.fit = false;
  pan.x = p.x; pan.y = p.y;
  applyView();
}

function endPan(event) {
  if (!pan || event.pointerId !== pan.id) return;
  pan = null;
  els.drop.classList.remove("panning");
}

function updatePanCursor() {
  els.drop.classList.toggle("pan-ready", state.panMode || state.spaceDown);
}

function setPanMode(on) {
  state.panMode = on;
  els.pan.setAttribute("aria-pressed", String(on));
  updatePanCursor();
}

// ---- controls --------------------------------------------------------------------------------------

function setNegativeMode(on) {
  state.negativeMode = on;
  els.mode.setAttribute("aria-pressed", String(on));
  els.mode.innerHTML = `Left click: <b>${on ? "negative" : "positive"}</b>`;
}

els.clicks.addEventListener("pointerdown", onPointerDown);
els.clicks.addEventListener("pointermove", onPointerMove);
els.clicks.addEventListener("pointerup", endPan);
els.clicks.addEventListener("pointercancel", endPan);
els.clicks.addEventListener("mousedown", (e) => { if (e.button === 1) e.preventDefault(); });   // no autoscroll
els.clicks.addEventListener("auxclick", (e) => e.preventDefault());
els.drop.addEventListener("wheel", onWheel, { passive: false });
els.zoomIn.addEventListener("click", () => zoomTo(state.view.s * ZOOM_STEP));
els.zoomOut.addEventListener("click", () => zoomTo(state.view.s / ZOOM_STEP));
els.fit.addEventListener("click", fitView);
els.zoom1.addEventListener("click", () => zoomTo(1));
els.pan.addEventListener("click", () => setPanMode(!state.panMode));
els.clicks.addEventListener("contextmenu", (e) => e.preventDefault());
els.drop.addEventListener("pointerdown", (e) => {
  if (!state.session && e.target !== els.clicks) setStatus("Open an image first, then click on it.", "error");
});
els.mode.addEventListener("click", () => setNegativeMode(!state.negativeMode));
els.undo.addEventListener("click", () => send("api/undo", { session: state.session }, "Undo …"));
els.reset.addEventListener("click", () => send("api/reset", { session: state.session }, "Reset …"));
els.opacity.addEventListener("input", () => { els.mask.style.opacity = els.opacity.value; });
els.file.addEventListener("change", () => { openFile(els.file.files[0]); els.file.value = ""; });
els.finish.addEventListener("click", finishObject);
els.del.addEventListener("click", deleteObject);
els.renameApply.addEventListener("click", renameObject);
els.rename.addEventListener("keydown", (e) => {
  if (e.key === "Enter") { e.preventDefault(); renameObject(); els.rename.blur(); }
  if (e.key === "Escape") { els.rename.blur(); renderObjects(); }
});
els.label.addEventListener("keydown", (e) => {   // Enter in the label field finishes the object with that label
  if (e.key === "Enter") { e.preventDefault(); els.label.blur(); finishObject(); }
});
els.autoNeg.addEventListener("change", () => setOption("auto_negatives", els.autoNeg.checked));
els.overlap.addEventListener("change", () => setOption("allow_overlap", els.overlap.checked));
els.importFile.addEventListener("change", () => { importCoco(els.importFile.files[0]); els.importFile.value = ""; });
els.prev.addEventListener("click", () => openProjectImage(state.projectIndex - 1));
els.next.addEventListener("click", () => openProjectImage(state.projectIndex + 1));
els.done.addEventListener("change", () => markDone(els.done.checked, false));   // D marks and goes on
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.add("dragover"); });
}
for (const type of ["dragleave", "drop"]) {
  document.addEventListener(type, (e) => { e.preventDefault(); els.drop.classList.remove("dragover"); });
}
document.addEventListener("drop", (e) => {
  if (state.project) return setStatus("This page annotates a folder: use Prev / Next to choose an image.", "error");
  openFile(e.dataTransfer.files[0]);
});
const typing = (e) => e.target instanceof HTMLInputElement && !["range", "file", "checkbox"].includes(e.target.type);
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z" && !els.undo.disabled) { e.preventDefault(); els.undo.click(); }
  if (!state.session || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
  if (e.key === " ") {   // hold Space to pan (and never let it scroll the page or press a focused button)
    e.preventDefault();
    if (!state.spaceDown) { state.spaceDown = true; updatePanCursor(); }
  } else if (e.key === "+" || e.key === "=") { e.preventDefault(); zoomTo(state.view.s * ZOOM_STEP); }
  else if (e.key === "-" || e.key === "_") { e.preventDefault(); zoomTo(state.view.s / ZOOM_STEP); }
  else if (e.key === "0") { e.preventDefault(); fitView(); }
  else if (e.key === "1") { e.preventDefault(); zoomTo(1); }
  else if (e.key === "Enter" || e.key === "n" || e.key === "N") { e.preventDefault(); finishObject(); }
  else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); deleteObject(); }
  else if (e.key === "Escape") { selectObject(null); }
  else if (e.key === "ArrowUp" || e.key === "ArrowDown") { e.preventDefault(); selectStep(e.key === "ArrowUp" ? -1 : 1); }
  else if (e.key === "F2" && state.selected !== null) { e.preventDefault(); els.rename.focus(); els.rename.select(); }
  else if (e.key === "a" || e.key === "A") { els.autoNeg.click(); }
  else if (e.key === "o" || e.key === "O") { els.overlap.click(); }
  else if (state.project && e.key === "ArrowLeft" && !els.prev.disabled) { e.preventDefault(); els.prev.click(); }
  else if (state.project && e.key === "ArrowRight" && !els.next.disabled) { e.preventDefault(); els.next.click(); }
  else if (state.project && (e.key === "d" || e.key === "D") && !els.done.disabled) { markDone(true, true); }
});
document.addEventListener("keyup", (e) => {
  if (e.key === " " && state.spaceDown) { e.preventDefault(); state.spaceDown = false; updatePanCursor(); }
});
window.addEventListener("blur", () => { state.spaceDown = false; updatePanCursor(); });
// The view follows the window: refit while the user has not zoomed or panned, else keep the image in view.
new ResizeObserver(() => {
  if (!state.session) return;
  if (state.view.fit) fitView(); else applyView();
}).observe(els.drop);
els.mask.style.opacity = els.opacity.value;
els.opacity.addEventListener("input", () => { els.objectsCanvas.style.opacity = els.opacity.value; });
els.objectsCanvas.style.opacity = els.opacity.value;

api("api/config").then((c) => {
  els.label.value = c.default_label;
  els.autoNeg.checked = c.auto_negatives; els.overlap.checked = c.allow_overlap;
  els.labelList.replaceChildren(...(c.labels || []).map((l) => Object.assign(document.createElement("option"), { value: l })));
  state.config = c;
  if (c.project) return startProject();
}).catch((e) => setStatus(e.message, "error"));
updateControls();
