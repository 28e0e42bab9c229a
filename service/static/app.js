// The page: one image in, per-level activation maps, receptive fields to scale and the top-5 classes out.
// Plain browser JavaScript over the public API only (GET /v1/models..., POST .../maps.png, POST .../features).
"use strict";

const LEVELS = ["low", "mid", "high"];
const LEVEL_COLOURS = { low: "#4fc3f7", mid: "#ffb74d", high: "#ef5350" };
const $ = (selector) => document.querySelector(selector);

const state = { model: null, labels: null, file: null, run: 0, objectUrls: [] };

function headers() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, kind = "busy") {
  $("#status").textContent = text;
  document.body.dataset.state = kind;
}

// A problem+json answer becomes an Error carrying the service's own explanation.
async function check(response) {
  if (response.ok) return response;
  let detail = `${response.status} ${response.statusText}`;
  try {
    const problem = await response.json();
    detail = `${problem.status} ${problem.title}: ${problem.detail}`;
  } catch (_) { /* not JSON: keep the status line */ }
  throw new Error(detail);
}

async function getJson(path) {
  return (await check(await fetch(path, { headers: headers() }))).json();
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
  forgetObjectUrls();
  setStatus(`Analysing ${file.name || "the image"}…`);
  $("#rf-image").setAttribute("href", await previewInput(file).catch(() => ""));
  const layers = mapLayers();
  for (const level of LEVELS) {
    const column = document.querySelector(`.level[data-level="${level}"]`);
    column.querySelectorAll("figure").forEach((figure) => figure.remove());
    layers.filter((layer) => layer.level === level).forEach((layer) => column.append(mapFigure(layer)));
  }
  $("#top5").replaceChildren();
  const jobs = [...layers.map((layer) => showMap(layer, file, run)), showTop5(file, run)];
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

async function showMap(layer, file, run) {
  const k = $("#k").value;
  const url = `/v1/models/${encodeURIComponent(state.model.name)}/layers/${encodeURIComponent(layer.name)}/maps.png`;
  const response = await check(await fetch(url, { method: "POST", headers: headers(), body: imageForm(file, { k }) }));
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

async function showTop5(file, run) {
  const layer = state.model.logits_layer;
  const list = $("#top5");
  if (!layer || !state.labels) {
    list.replaceChildren(element("li", { class: "hint" }, "this model has no class labels"));
    return;
  }
  const url = `/v1/models/${encodeURIComponent(state.model.name)}/features`;
  const body = imageForm(file, { layers: layer });
  const answer = await (await check(await fetch(url, { method: "POST", headers: headers(), body }))).json();
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
