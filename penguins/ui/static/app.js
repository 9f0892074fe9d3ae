// The penguin page. It knows no feature, species or rule of its own: the form is built from the Penguin schema in
// the service's OpenAPI document, the service validates what is typed (its 400 messages are shown by the field),
// and every answer comes from the public APIs (models, explain, training_map).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  // Colours by the position of a species in the model's classes (the contract's order), not by name.
  const PALETTE = ["#e07000", "#8a3ab9", "#0f8a8a", "#3b6fd4", "#b8860b", "#c2185b"];
  const UNITS = { mm: "mm", g: "g" };

  const $ = (id) => document.getElementById(id);
  const state = { schema: null, fields: [], colours: new Map(), maps: new Map(), request: 0 };

  // --- talking to the service ------------------------------------------------------------------------------------

  const endpoint = (name) => new URL(`../${name}`, document.baseURI).href; // the page lives at <service>/ui/

  async function post(name, body) {
    const response = await fetch(endpoint(name), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    return { ok: response.ok, status: response.status, data };
  }

  function messageOf(status, data) {
    if (Array.isArray(data)) return data.map((e) => e.error || JSON.stringify(e)).join("; ");
    if (data && data.error) return data.error;
    return `The service answered ${status}`;
  }

  // --- the form, from the schema ---------------------------------------------------------------------------------

  function labelOf(name) {
    // bill_length_mm -> "Bill length (mm)"
    const words = name.split("_");
    const unit = words.length > 1 ? UNITS[words[words.length - 1]] : undefined;
    if (unit) words.pop();
    const text = words.join(" ");
    return text.charAt(0).toUpperCase() + text.slice(1) + (unit ? ` (${unit})` : "");
  }

  function choicesOf(property) {
    // OpenAPI 3.0: a nullable enum lists null among its values; the form offers "unknown" for it instead.
    if (property.enum) return { values: property.enum.filter((v) => v !== null), optional: Boolean(property.nullable) };
    const options = property.anyOf || [];
    const listed = options.find((o) => o.enum);
    if (!listed) return null;
    return { values: listed.enum, optional: options.some((o) => o.type === "null") };
  }

  function buildForm(schema) {
    const container = $("fields");
    container.textContent = "";
    const required = new Set(schema.required || []);
    for (const [name, property] of Object.entries(schema.properties)) {
      const wrapper = document.createElement("div");
      wrapper.className = "field";
      const id = `field-${name}`;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = labelOf(name);
      const choices = choicesOf(property);
      let input;
      if (choices) {
        input = document.createElement("select");
        if (choices.optional || !required.has(name)) input.append(new Option("unknown", ""));
        for (const value of choices.values) input.append(new Option(value, value));
      } else {
        input = document.createElement("input");
        input.type = "text"; // the service validates; the browser must not swallow what was typed
        input.inputMode = property.type === "integer" ? "numeric" : "decimal";
        input.autocomplete = "off";
      }
      input.id = id;
      input.name = name;
      if (required.has(name)) input.setAttribute("aria-required", "true");
      const hint = document.createElement("small");
      hint.className = "hint";
      hint.id = `hint-${name}`;
      hint.textContent = property.description || "";
      const error = document.createElement("span");
      error.className = "error";
      error.id = `error-${name}`;
      error.setAttribute("role", "status");
      input.setAttribute("aria-describedby", `${hint.id} ${error.id}`);
      wrapper.append(label, input, hint, error);
      container.append(wrapper);
      state.fields.push({ name, input, property });
    }
    fillExample();
  }

  function fillExample() {
    const example = (state.schema && state.schema.example) || {};
    for (const { name, input } of state.fields) {
      const value = example[name];
      input.value = value === undefined || value === null ? "" : String(value);
    }
  }

  function valueOf(raw) {
    const text = raw.trim();
    const number = Number(text);
    return text !== "" && Number.isFinite(number) ? number : raw; // not a number: let the service say so
  }

  function penguinFromForm() {
    const penguin = {};
    for (const { name, input } of state.fields) {
      if (input.tagName === "SELECT") {
        if (input.value !== "") penguin[name] = input.value;
      } else {
        penguin[name] = valueOf(input.value);
      }
    }
    return penguin;
  }

  // --- errors next to their field ----------------------------------------------------------------------------------

  function clearErrors() {
    for (const element of document.querySelectorAll(".error")) element.textContent = "";
    for (const element of document.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
    $("form-error").hidden = true;
  }

  function showError(fieldId, inputId, message) {
    const slot = $(fieldId);
    const input = $(inputId);
    if (!slot || !input) return false;
    slot.textContent = slot.textContent ? `${slot.textContent}; ${message}` : message;
    input.setAttribute("aria-invalid", "true");
    return true;
  }

  function showFormError(message) {
    const banner = $("form-error");
    banner.textContent = message;
    banner.hidden = false;
  }

  function showErrors(status, data) {
    const details = data && Array.isArray(data.detail) ? data.detail : [];
    const loose = [];
    for (const detail of details) {
      const loc = detail.loc || [];
      let shown = false;
      if (loc[0] === "penguin" && loc.length > 1) shown = showError(`error-${loc[1]}`, `field-${loc[1]}`, detail.msg);
      else if (loc[0] === "k") shown = showError("k-error", "k", detail.msg);
      else if (loc[0] === "model") shown = showError("model-error", "model", detail.msg);
      if (!shown) loose.push(`${loc.join(".")}: ${detail.msg}`);
    }
    if (!details.length && data && data.field === "model") {
      showError("model-error", "model", messageOf(status, data));
    } else if (!details.length || loose.length) {
      showFormError(loose.length ? loose.join("; ") : messageOf(status, data));
    }
    const first = document.querySelector("[aria-invalid='true']");
    if (first) first.focus();
  }

  // --- the answer ----------------------------------------------------------------------------------------------------

  function colourOf(species) {
    if (!state.colours.has(species)) state.colours.set(species, PALETTE[state.colours.size % PALETTE.length]);
    return state.colours.get(species);
  }

  function percent(value) {
    return `${(100 * value).toFixed(1)}%`;
  }

  function bars(list, entries, scale, format) {
    list.textContent = "";
    for (const [name, value] of entries) {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, value / scale)) * 100}%`;
      bar.append(fill);
      const text = document.createElement("span");
      text.className = "value";
      text.textContent = format(value);
      item.append(label, bar, text);
      item.dataset.name = name;
      if (state.colours.has(name)) fill.style.background = state.colours.get(name); // a species: its map colour
      list.append(item);
    }
  }

  function showPrediction(explanation) {
    const prediction = explanation.prediction;
    for (const species of Object.keys(prediction.probabilities)) colourOf(species);
    $("species").textContent = prediction.species;
    $("model-tag").textContent = prediction.model;
    bars($("probabilities"), Object.entries(prediction.probabilities), 1, percent);

    const importance = explanation.importance;
    const entries = Object.entries(importance.values).map(([name, value]) => [labelOf(name), value]);
    const top = Math.max(...entries.map(([, v]) => v), 1e-9);
    $("importance-method").textContent =
      importance.method === "impurity"
        ? "The model's own importances (impurity decrease), one-hot columns summed."
        : "Permutation importance: the drop in held-out accuracy when a feature is shuffled (measured at training).";
    bars($("importance"), entries, top, (v) => v.toFixed(3));
    $("result").hidden = false;
  }

  function showNeighbours(explanation) {
    const table = $("neighbours");
    const head = table.tHead;
    const body = table.tBodies[0];
    head.textContent = "";
    body.textContent = "";
    const names = state.fields.map((f) => f.name);
    const headRow = head.insertRow();
    for (const title of ["#", "Species", "Distance", ...names.map((n) => labelOf(n))]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      headRow.append(th);
    }
    explanation.neighbours.forEach((neighbour, position) => {
      const row = body.insertRow();
      row.insertCell().textContent = String(position + 1);
      const speciesCell = row.insertCell();
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(neighbour.species);
      swatch.setAttribute("aria-hidden", "true");
      speciesCell.append(swatch, document.createTextNode(neighbour.species));
      const distance = row.insertCell();
      distance.className = "number";
      distance.textContent = neighbour.distance.toFixed(3);
      for (const name of names) {
        const value = neighbour.penguin[name];
        const cell = row.insertCell();
        if (typeof value === "number") cell.className = "number";
        cell.textContent = value === null || value === undefined ? "unknown" : String(value);
      }
    });
    $("neighbours-section").hidden = false;
  }

  // --- the PCA map -----------------------------------------------------------------------------------------------------

  function svgElement(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (parent) parent.append(element);
    return element;
  }

  function star(cx, cy, outer, inner) {
    const corners = [];
    for (let i = 0; i < 10; i += 1) {
      const radius = i % 2 ? inner : outer;
      const angle = -Math.PI / 2 + (i * Math.PI) / 5;
      corners.push(`${(cx + radius * Math.cos(angle)).toFixed(1)},${(cy + radius * Math.sin(angle)).toFixed(1)}`);
    }
    return corners.join(" ");
  }

  function drawMap(map, explanation) {
    const width = 640;
    const height = 460;
    const pad = { left: 46, right: 16, top: 16, bottom: 44 };
    const all = [...map.points, explanation.pca];
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => p.y);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const margin = 0.05;
    const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (1 - 2 * margin) * (width - pad.left - pad.right)
      + margin * (width - pad.left - pad.right);
    const sy = (y) => pad.top + ((y1 - y) / (y1 - y0 || 1)) * (1 - 2 * margin) * (height - pad.top - pad.bottom)
      + margin * (height - pad.top - pad.bottom);

    const prediction = explanation.prediction;
    const svg = svgElement("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-labelledby": "map-svg-title map-svg-desc",
      "data-points": map.points.length,
      "data-model": map.model,
    });
    svgElement("title", { id: "map-svg-title" }, svg).textContent = "PCA map of the training penguins";
    svgElement("desc", { id: "map-svg-desc" }, svg).textContent =
      `${map.points.length} training penguins coloured by species on the first two principal components; ` +
      `the penguin (predicted ${prediction.species}) is the star, its ${explanation.neighbours.length} nearest ` +
      "training penguins are ringed.";

    const frame = { x: pad.left, y: pad.top, w: width - pad.left - pad.right, h: height - pad.top - pad.bottom };
    svgElement("rect", { x: frame.x, y: frame.y, width: frame.w, height: frame.h, fill: "#fff", stroke: "#c9ced8" }, svg);
    if (x0 < 0 && x1 > 0) {
      svgElement("line", { x1: sx(0), x2: sx(0), y1: frame.y, y2: frame.y + frame.h, stroke: "#e3e6ec" }, svg);
    }
    if (y0 < 0 && y1 > 0) {
      svgElement("line", { x1: frame.x, x2: frame.x + frame.w, y1: sy(0), y2: sy(0), stroke: "#e3e6ec" }, svg);
    }
    const [v1, v2] = map.explained_variance;
    const xLabel = svgElement("text", { x: frame.x + frame.w / 2, y: height - 12, "text-anchor": "middle",
      "font-size": 15, fill: "#5b6475" }, svg);
    xLabel.textContent = `PC1 (${percent(v1)} of the variance)`;
    const yLabel = svgElement("text", { x: 0, y: 0, "text-anchor": "middle", "font-size": 15, fill: "#5b6475",
      transform: `translate(18 ${frame.y + frame.h / 2}) rotate(-90)` }, svg);
    yLabel.textContent = `PC2 (${percent(v2)})`;

    const training = svgElement("g", { class: "map-training" }, svg);
    for (const point of map.points) {
      svgElement("circle", { cx: sx(point.x).toFixed(1), cy: sy(point.y).toFixed(1), r: 3.4,
        fill: colourOf(point.species), "fill-opacity": 0.7 }, training);
    }

    const px = sx(explanation.pca.x);
    const py = sy(explanation.pca.y);
    const links = svgElement("g", { class: "map-links", stroke: "#1d2330", "stroke-width": 1,
      "stroke-dasharray": "3 3" }, svg);
    const rings = svgElement("g", { class: "map-neighbours" }, svg);
    for (const neighbour of explanation.neighbours) {
      const nx = sx(neighbour.pca.x);
      const ny = sy(neighbour.pca.y);
      svgElement("line", { x1: px, y1: py, x2: nx, y2: ny }, links);
      const ring = svgElement("circle", { class: "map-neighbour", cx: nx, cy: ny, r: 7, fill: "none",
        stroke: "#1d2330", "stroke-width": 2 }, rings);
      svgElement("title", {}, ring).textContent =
        `Neighbour: ${neighbour.species}, distance ${neighbour.distance.toFixed(3)}`;
    }
    const marker = svgElement("polygon", { id: "map-penguin", points: star(px, py, 12, 5),
      fill: colourOf(prediction.species), stroke: "#1d2330", "stroke-width": 2 }, svg);
    svgElement("title", {}, marker).textContent = `This penguin: predicted ${prediction.species}`;

    const container = $("map");
    container.textContent = "";
    container.append(svg);
    $("map-caption").textContent =
      `${map.points.length} training penguins of ${map.model} on the first two principal components of the ` +
      "model's preprocessed features.";
    drawLegend();
    $("map-section").hidden = false;
  }

  function drawLegend() {
    const legend = $("legend");
    legend.textContent = "";
    const item = (draw, text) => {
      const li = document.createElement("li");
      const icon = svgElement("svg", { viewBox: "0 0 18 18", "aria-hidden": "true" });
      draw(icon);
      li.append(icon, document.createTextNode(text));
      legend.append(li);
    };
    for (const [species, colour] of state.colours) {
      item((s) => svgElement("circle", { cx: 9, cy: 9, r: 5, fill: colour }, s), species);
    }
    item((s) => svgElement("polygon", { points: star(9, 9, 8, 3.5), fill: "#fff", stroke: "#1d2330",
      "stroke-width": 1.5 }, s), "This penguin");
    item((s) => svgElement("circle", { cx: 9, cy: 9, r: 6, fill: "none", stroke: "#1d2330", "stroke-width": 2 }, s),
      "Nearest training penguins");
  }

  async function mapFor(tag) {
    if (!state.maps.has(tag)) {
      const answer = await post("training_map", { model: tag });
      if (!answer.ok) throw new Error(messageOf(answer.status, answer.data));
      state.maps.set(tag, answer.data);
    }
    return state.maps.get(tag);
  }

  // --- putting it together -------------------------------------------------------------------------------------------

  async function submit(event) {
    if (event) event.preventDefault();
    const request = ++state.request;
    clearErrors();
    const button = $("submit");
    button.disabled = true;
    document.body.setAttribute("aria-busy", "true");
    try {
      const body = { penguin: penguinFromForm(), k: valueOf($("k").value) };
      if ($("model").value) body.model = $("model").value;
      const answer = await post("explain", body);
      if (request !== state.request) return; // a newer request is on its way
      if (!answer.ok) {
        showErrors(answer.status, answer.data);
        if (answer.status === 404) await loadModels(); // the chosen model is gone: offer what is served now
        return;
      }
      showPrediction(answer.data);
      showNeighbours(answer.data);
      const map = await mapFor(answer.data.prediction.model);
      if (request !== state.request) return;
      drawMap(map, answer.data);
    } catch (error) {
      showFormError(`Could not reach the service: ${error.message}`);
    } finally {
      if (request === state.request) {
        button.disabled = false;
        document.body.removeAttribute("aria-busy");
      }
    }
  }

  async function loadModels() {
    const answer = await post("models");
    if (!answer.ok) {
      showFormError(messageOf(answer.status, answer.data));
      return;
    }
    const select = $("model");
    const offered = answer.data.models.map((model) => {
      const accuracy = model.metrics.cv_accuracy_mean;
      const score = typeof accuracy === "number" ? `, CV accuracy ${percent(accuracy)}` : "";
      return [`${model.algorithm}${score}${model.default ? " (best)" : ""}`, model.name];
    });
    const shown = [...select.options].slice(1).map((o) => [o.text, o.value]);
    if (JSON.stringify(offered) === JSON.stringify(shown)) return false; // unchanged: leave an open list alone
    const keep = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const [text, name] of offered) select.append(new Option(text, name));
    // A model no longer served falls back to the best one.
    select.value = offered.some(([, name]) => name === keep) ? keep : "";
    return select.value !== keep;
  }

  // A model trained (or removed) while the page is open is offered once the user comes back to the page: from
  // JupyterLab's tab, say. A chosen model that is gone is answered by the best one.
  async function followModels() {
    if (document.hidden || document.body.dataset.ready !== "true") return;
    if (await loadModels()) await submit();
  }

  async function start() {
    try {
      const response = await fetch(endpoint("docs.json"));
      const spec = await response.json();
      state.schema = spec.components.schemas.Penguin;
    } catch (error) {
      showFormError(`Could not read the penguin schema from the service: ${error.message}`);
      return;
    }
    buildForm(state.schema);
    $("penguin-form").addEventListener("submit", submit);
    $("model").addEventListener("change", () => submit());
    $("reset").addEventListener("click", () => {
      fillExample();
      submit();
    });
    await loadModels();
    document.body.dataset.ready = "true";
    document.addEventListener("visibilitychange", followModels);
    window.addEventListener("focus", followModels);
    await submit();
  }

  start();
})();
