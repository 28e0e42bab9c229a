// The page: one image in, per-level activation maps, receptive fields to scale and the top-5 classes out.
// Plain browser JavaScript over the public API only (GET /v1/models..., POST .../maps.png, POST .../features),
// plus the uploaded image's nearest indexed neighbours per level (GET /v1/index, POST .../search, entry thumbnails).
"use strict";

const LEVELS = ["low", "mid", "high"];
const LEVEL_COLOURS = { low: "#4fc3f7", mid: "#ffb74d", high: "#ef5350" };
const $ = (selector) => document.querySelector(selector);

const SEARCH_K = 6;
const THUMBNAIL_SIZE = 256;

// run counts uploads: an answer for an older run is dropped; abort cancels the older run's requests.
const state = { model: null, labels: null, file: null, run: 0, abort: null, objectUrls: [], thumbnails: new Map() };

function headers() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, kind = "busy") {
  $("#status").textContent = text;
  document.body.dataset.state = kind;
}

// A problem+json answer becomes an Error carrying the service's own explanation (and its status and detail).
async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  let detail = message;
  try {
    const problem = await response.json();
    message = `${problem.status} ${problem.title}: ${problem.detail}`;
    detail = problem.detail ?? message;
  } catch (_) { /* not JSON: keep the status line */ }
  const error = new Error(message);
  error.status = response.status;
  error.detail = detail;
  throw error;
}

async function getJson(path, signal) {
  return (await check(await fetch(path, { headers: headers(), signal }))).json();
}

function imageForm(file, fields) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  return form;
}

function softmax(values) {
  const peak = Math.max(...values);
  const exps = values.map((v) => Math.exp(v - peak));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / total);
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function svgElement(tag, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function forgetObjectUrls() {
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
  state.thumbnails = new Map();
}

function layerByName(name) {
  return state.model.layers.find((layer) => layer.name === name);
}

// How far a layer looks, in the words of the layer table and the map captions.
function layerReach(layer) {
  if (!layer) return "";
  if (layer.token_grid) return `stride ${layer.stride} px · patch tokens: each has attended to the whole image`;
  if (layer.stride && layer.receptive_field) return `stride ${layer.stride} px · receptive field ${layer.receptive_field} px`;
  if (layer.stride) return `stride ${layer.stride} px · receptive field: the whole image`;
  return "a vector of the whole image";
}

function spatialLayers() {
  return state.model.layers.filter((layer) => layer.shape.length === 3);
}

// Which layers get maps: every spatial layer, or the deepest spatial layer of each level.
function mapLayers() {
  const spatial = spatialLayers();
  if ($("#all-layers").checked) return spatial;
  return LEVELS.map((level) => spatial.filter((layer) => layer.level === level).pop()).filter(Boolean);
}

// --- model catalogue ------------------------------------------------------------------------------------------

async function loadModels() {
  try {
    const { models } = await getJson("/v1/models");
    const select = $("#model");
    const previous = select.value;
    select.replaceChildren(...models.map((m) => element("option", { value: m.name }, m.name)));
    if (models.some((m) => m.name === previous)) select.value = previous;
    await loadModel();
  } catch (error) {
    setStatus(`Cannot list the models (${error.message}). If the service needs an API key, type it above.`, "error");
  }
}

async function loadModel() {
  const name = $("#model").value;
  if (!name) return;
  state.model = await getJson(`/v1/models/${encodeURIComponent(name)}`);
  state.labels = null;
  if (state.model.logits_layer && state.model.labels) {
    state.labels = (await getJson(`/v1/models/${encodeURIComponent(name)}/labels`)).labels;
  }
  showLayerTable();
  drawReceptiveFields();
  showFilters();
  if (state.file) analyse(state.file);
  else setStatus("Ready: drop or pick an image.", "idle");
}

function showLayerTable() {
  const rows = state.model.layers.map((layer) => {
    const row = element("tr", { "data-level": layer.level });
    const cells = [layer.name, layer.level, layer.shape.join("×"),
      layer.stride ? `${layer.stride} px` : "–",
      layer.token_grid ? "whole image (attention)" : layer.receptive_field ? `${layer.receptive_field} px` : "whole image"];
    cells.forEach((text) => row.append(element("td", {}, text)));
    return row;
  });
  $("#layers tbody").replaceChildren(...rows);
}

async function showFilters() {
  const box = $("#filters");
  box.replaceChildren();
  const first = state.model.layers[0];
  try {
    const url = `/v1/models/${encodeURIComponent(state.model.name)}/layers/${encodeURIComponent(first.name)}/filters.png`;
    const blob = await (await check(await fetch(url, { headers: headers() }))).blob();
    const objectUrl = URL.createObjectURL(blob);
    const figure = element("figure");
    figure.append(element("img", { src: objectUrl, alt: `filters of ${first.name}`, class: "filters-img" }),
      element("figcaption", {}, `${first.name}: ${first.shape[0]} filters`));
    box.append(figure);
  } catch (error) {
    box.append(element("p", { class: "hint" }, `No pixel filters to show: ${error.message}`));
  }
}

// --- receptive fields -----------------------------------------------------------------------------------------

function inputSize() {
  const [, height, width] = state.model.input.shape;
  return { width, height };
}

// The network input, as the service makes it: shorter side to `resize`, centre crop to `size` (one resampling).
async function previewInput(file) {
  const bitmap = await createImageBitmap(file);
  const { width, height } = inputSize();
  const { resize } = state.model.preprocess;
  const scale = Math.max(resize / Math.min(bitmap.width, bitmap.height), height / bitmap.height, width / bitmap.width);
  const boxW = width / scale;
  const boxH = height / scale;
  const canvas = element("canvas", { width, height });
  canvas.getContext("2d").drawImage(bitmap, (bitmap.width - boxW) / 2, (bitmap.height - boxH) / 2, boxW, boxH,
    0, 0, width, height);
  return canvas.toDataURL("image/png");
}

function drawReceptiveFields() {
  const { width, height } = inputSize();
  const svg = $("#rf");
  svg.setAttribute("viewBox", `${-width / 2} ${-height / 2} ${2 * width} ${2 * height}`);
  const outside = svg.querySelector(".rf-outside");
  Object.entries({ x: -width / 2, y: -height / 2, width: 2 * width, height: 2 * height })
    .forEach(([name, value]) => outside.setAttribute(name, value));
  ["#rf-image", "#rf-frame"].forEach((id) => {
    $(id).setAttribute("width", width);
    $(id).setAttribute("height", height);
  });
  const group = $("#rf-squares");
  const legend = $("#rf-legend");
  group.replaceChildren();
  legend.replaceChildren();
  const dashes = ["", "6 3", "2 3"];
  const perLevel = {};
  spatialLayers().filter((layer) => layer.receptive_field).forEach((layer) => {
    const side = layer.receptive_field;
    const colour = LEVEL_COLOURS[layer.level];
    const dash = dashes[(perLevel[layer.level] = (perLevel[layer.level] ?? -1) + 1) % dashes.length];
    group.append(svgElement("rect", { x: width / 2 - side / 2, y: height / 2 - side / 2, width: side, height: side,
      class: "rf-square", stroke: colour, "stroke-dasharray": dash, "data-layer": layer.name }));
    const item = element("li", { "data-layer": layer.name });
    const sample = svgElement("svg", { width: 28, height: 10, "aria-hidden": "true" });
    sample.append(svgElement("line", { x1: 0, y1: 5, x2: 28, y2: 5, stroke: colour, "stroke-width": 3,
      "stroke-dasharray": dash }));
    const beyond = side > 2 * Math.max(width, height) ? ", beyond this view" : "";
    item.append(sample, element("span", {}, ` ${layer.name} (${layer.level}): ${side} px${beyond}`));
    legend.append(item);
  });
}

// --- analysis -------------------------------------------------------------------------------------------------

async function analyse(file) {
  if (!state.model) return;
  state.file = file;
  const run = ++state.run;
  state.abort?.abort();  // the previous upload's requests: their answers would be dropped anyway
  state.abort = new AbortController();
  const signal = state.abort.signal;
  forgetObjectUrls();
  clearNeighbours(`Looking for the neighbours of ${file.name || "the image"}…`);
  setStatus(`Analysing ${file.name || "the image"}…`);
  $("#rf-image").setAttribute("href", await previewInput(file).catch(() => ""));
  const layers = mapLayers();
  for (const level of LEVELS) {
    const column = document.querySelector(`.level[data-level="${level}"]`);
    column.querySelectorAll("figure").forEach((figure) => figure.remove());
    layers.filter((layer) => layer.level === level).forEach((layer) => column.append(mapFigure(layer)));
  }
  $("#top5").replaceChildren();
  const jobs = [...layers.map((layer) => showMap(layer, file, run, signal)), showTop5(file, run, signal),
    showNeighbours(file, run, signal)];
  const outcomes = await Promise.allSettled(jobs);
  if (run !== state.run) return;
  const failures = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason.message);
  if (failures.length) setStatus(`Some parts failed: ${failures[0]}`, "error");
  else setStatus(`Done: ${layers.length} layers of ${state.model.name}.`, "done");
}

function mapFigure(layer) {
  const figure = element("figure", { class: "map", "data-layer": layer.name });
  figure.append(element("figcaption", {},
    `${layer.name} · stride ${layer.stride} px · ` +
    (layer.token_grid ? "patch tokens: each has attended to the whole image" : `receptive field ${layer.receptive_field} px`)));
  return figure;
}

async function showMap(layer, file, run, signal) {
  const k = $("#k").value;
  const url = `/v1/models/${encodeURIComponent(state.model.name)}/layers/${encodeURIComponent(layer.name)}/maps.png`;
  const response = await check(await fetch(url, { method: "POST", headers: headers(), body: imageForm(file, { k }),
    signal }));
  const blob = await response.blob();
  if (run !== state.run) return;
  const objectUrl = URL.createObjectURL(blob);
  state.objectUrls.push(objectUrl);
  const image = element("img", { class: "map", src: objectUrl, alt: `activation maps of ${layer.name}`,
    "data-layer": layer.name });
  await image.decode().catch(() => {});
  const link = element("a", { href: objectUrl, target: "_blank", rel: "noopener" });
  link.append(image);
  document.querySelector(`figure.map[data-layer="${layer.name}"]`)?.prepend(link);
}

async function showTop5(file, run, signal) {
  const layer = state.model.logits_layer;
  const list = $("#top5");
  if (!layer || !state.labels) {
    list.replaceChildren(element("li", { class: "hint" }, "this model has no class labels"));
    return;
  }
  const url = `/v1/models/${encodeURIComponent(state.model.name)}/features`;
  const body = imageForm(file, { layers: layer });
  const answer = await (await check(await fetch(url, { method: "POST", headers: headers(), body, signal }))).json();
  if (run !== state.run) return;
  const features = answer.results[0].features;
  const level = Object.keys(features).find((name) => layer in features[name]);
  const probabilities = softmax(features[level][layer].values);
  const top = probabilities.map((p, index) => [p, index]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  list.replaceChildren(...top.map(([p, index]) => {
    const item = element("li", { "data-class": state.labels[index] });
    const bar = element("span", { class: "bar", style: `width: ${(100 * p).toFixed(1)}%` });
    item.append(element("span", { class: "label" }, state.labels[index]),
      element("span", { class: "probability" }, `${(100 * p).toFixed(1)}%`), bar);
    return item;
  }));
}

// --- nearest indexed images ----------------------------------------------------------------------------------

function clearNeighbours(note) {
  $("#neighbours").replaceChildren();
  const line = $("#search-note");
  line.className = "hint";
  line.replaceChildren(note);
}

// One quiet line: no index, or none for this model. Says how to make one; never an error.
function noIndex(reason) {
  const model = state.model.name;
  const line = $("#search-note");
  line.className = "hint";
  line.replaceChildren(`${reason}. To search by level, index a folder of images with `,
    element("code", {}, `python -m extract IMAGES --model ${model} --out DIR --index INDEXDIR`),
    " and start the service with ", element("code", {}, "FEATURES_INDEX=INDEXDIR"), ".");
}

// Per level, the deepest indexed layer; for high, the deepest before the class scores when one is indexed:
// logits compare predicted classes, the pooled features before them compare what the image shows.
function searchLayers(collection) {
  const indexed = new Set(collection.layers.map((layer) => layer.name));
  return LEVELS.map((level) => {
    const names = (state.model.levels[level] ?? []).filter((name) => indexed.has(name));
    const features = names.filter((name) => name !== state.model.logits_layer);
    return [level, (features.length ? features : names).pop()];
  }).filter(([, name]) => name);
}

async function showNeighbours(file, run, signal) {
  try {
    await findNeighbours(file, run, signal);
  } catch (error) {
    if (run !== state.run) return;
    const line = $("#search-note");
    line.className = "hint error";
    line.textContent = `Cannot search the index: ${error.message}`;
    throw error;
  }
}

async function findNeighbours(file, run, signal) {
  const model = state.model.name;
  let catalogue;
  try {
    catalogue = await getJson("/v1/index", signal);
  } catch (error) {
    if (error.status !== 404) throw error;
    if (run === state.run) noIndex("This service has no search index");
    return;
  }
  if (run !== state.run) return;
  const mine = catalogue.collections.filter((c) => c.model === model && c.searchable && c.entries > 0);
  const collection = mine.find((c) => c.pooling === "avg") ?? mine[0];
  const picked = collection ? searchLayers(collection) : [];
  if (!picked.length) {
    const stale = catalogue.collections.some((c) => c.model === model && !c.searchable);
    noIndex(stale ? `The index holds vectors of another version of ${model}, which cannot be compared`
      : `The index holds no images for ${model}`);
    return;
  }
  const url = `/v1/models/${encodeURIComponent(model)}/search`;
  const body = imageForm(file, { layers: picked.map(([, name]) => name).join(","), pooling: collection.pooling,
    k: SEARCH_K });
  const answer = await (await check(await fetch(url, { method: "POST", headers: headers(), body, signal }))).json();
  if (run !== state.run) return;
  const found = answer.results[0].neighbours;
  $("#search-note").textContent = `${collection.entries} indexed images (collection ${collection.name}, ` +
    `${collection.pooling} pooling); the ${SEARCH_K} nearest at each level:`;
  const columns = picked.map(([level, name]) => neighbourColumn(level, name, found[level]?.[name] ?? []));
  $("#neighbours").replaceChildren(...columns.map(({ column }) => column));
  await Promise.allSettled(columns.flatMap(({ pending }) => pending.map((job) => job(run, signal))));
}

function neighbourColumn(level, layerName, neighbours) {
  const column = element("div", { class: "search-column", "data-level": level, "data-layer": layerName });
  const heading = element("h3", {}, "");
  heading.append(element("span", { class: "level-name" }, level), layerName);
  column.append(heading, element("p", { class: "hint" }, layerReach(layerByName(layerName))));
  const list = element("ol", { class: "neighbours" });
  const pending = neighbours.map((neighbour) => {
    const item = element("li", { class: "neighbour", "data-id": neighbour.id, title: neighbour.path });
    const holder = element("div", { class: "thumb loading" });
    const name = neighbour.path.split(/[\\/]/).pop() || neighbour.path;
    item.append(holder, element("span", { class: "score" }, neighbour.score.toFixed(3)),
      element("span", { class: "file", title: neighbour.path }, name));
    list.append(item);
    return (run, signal) => showThumbnail(holder, neighbour, name, run, signal);
  });
  if (!neighbours.length) column.append(element("p", { class: "hint" }, "no neighbours found"));
  column.append(list);
  return { column, pending };
}

// One request per entry and upload, however many columns show it: <img src> cannot send the API key.
function thumbnailUrl(id, run, signal) {
  if (!state.thumbnails.has(id)) {
    state.thumbnails.set(id, (async () => {
      const url = `/v1/index/entries/${encodeURIComponent(id)}/image?size=${THUMBNAIL_SIZE}`;
      const blob = await (await check(await fetch(url, { headers: headers(), signal }))).blob();
      if (run !== state.run) throw new Error("a newer upload replaced this one");
      const objectUrl = URL.createObjectURL(blob);
      state.objectUrls.push(objectUrl);
      return objectUrl;
    })());
  }
  return state.thumbnails.get(id);
}

async function showThumbnail(holder, neighbour, name, run, signal) {
  try {
    const objectUrl = await thumbnailUrl(neighbour.id, run, signal);
    const image = element("img", { class: "thumb", src: objectUrl, alt: name });
    await image.decode();
    if (run === state.run) holder.replaceWith(image);
  } catch (error) {
    if (run !== state.run) return;
    holder.className = "thumb missing";
    holder.title = error.detail ?? error.message;
    holder.textContent = "no picture";
  }
}

// --- wiring ---------------------------------------------------------------------------------------------------

function wire() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (event) => event.target.files[0] && analyse(event.target.files[0]));
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) analyse(file);
  });
  $("#model").addEventListener("change", () => loadModel().catch((e) => setStatus(e.message, "error")));
  $("#k").addEventListener("change", () => state.file && analyse(state.file));
  $("#all-layers").addEventListener("change", () => state.file && analyse(state.file));
  $("#api-key").addEventListener("change", loadModels);
  loadModels();
}

wire();
