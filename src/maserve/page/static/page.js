/* maserve's prediction page: a form for each api of config.json (embedded in index.html by
   maserve.page), each answer shown as formatted JSON with its status, latency and request id.

   Plain DOM code, no framework and no build step, nothing loaded from elsewhere (air-gapped
   users). Every request the page makes is an ordinary call of the service's apis, /health or a
   file of the page itself: what works here works from curl. Text from the server is only ever
   set as textContent, never parsed as HTML.

   A module (strict, deferred), importing its siblings by relative path from the page's own path:
   common.js (helpers, schema words, answers), stream.js (HTTP calls, Server-Sent Events, the
   WebSocket client, the chat panel) and draw.js (the drawing canvas). This file: the data embedded
   in index.html, the pieces of an api's card, the cards, and the page. */

import {JSON_TYPE, MAX_EVENTS_SHOWN, h, pretty, isObject, isError, parseJson, wsUrl, absolute, bytes, canonical, mainType,
  describe, example, showFailure, jsonInit, fetchSample, errorBox} from "./common.js";
import {call, chatPanel} from "./stream.js";
import {drawPanel} from "./draw.js";

const DATA = JSON.parse(document.getElementById("maserve-data").textContent);
const MULTIPART = "multipart/form-data";
const IMAGE_NAME = /\.(png|jpe?g|bmp|gif|webp|tiff?)$/i;
const HEALTH_EVERY_MS = 5000;

// -- pieces of an api's card ----------------------------------------------------------------
function samplesRow(api, pick) {
  if (!api.samples.length) return null;
  return h("div", {class: "samples"}, h("span", {class: "label", text: "Samples"}),
    api.samples.map((sample) => h("button", {
      type: "button", class: "sample", "data-sample": sample.name,
      title: sample.expected != null ? `expected: ${JSON.stringify(sample.expected)}` : `send ${sample.name}`,
      onclick: () => pick(sample).catch((error) => console.warn(error)),
    }, sample.url && IMAGE_NAME.test(sample.name) ? h("img", {src: sample.url, alt: "", class: "thumb"}) : null, sample.name)));
}

function schemaDetails(title, schema) {
  const props = isObject(schema) && isObject(schema.properties) ? schema.properties : {};
  const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
  const rows = Object.entries(props).map(([name, spec]) => h("tr", {},
    h("td", {}, h("code", {text: name}), required.has(name) ? h("span", {class: "req", text: " required"}) : null),
    h("td", {text: describe(spec)}),
    h("td", {class: "desc", text: isObject(spec) && spec.description ? spec.description : ""})));
  return h("details", {class: "schema"}, h("summary", {text: title}),
    rows.length ? h("table", {}, h("tbody", {}, rows)) : null,
    isObject(schema) && schema.description ? h("p", {class: "desc", text: schema.description}) : null,
    h("pre", {class: "json", text: pretty(schema)}));
}

function fieldInput(name, spec, required) {
  const kind = isObject(spec) && spec.type === "file" ? "file" : mainType(spec);
  let input;
  if (kind === "file") input = h("input", {type: "file", name, "data-kind": "file"});
  else if (isObject(spec) && Array.isArray(spec.enum)) {
    input = h("select", {name, "data-kind": "text"}, required ? null : h("option", {value: "", text: ""}),
      spec.enum.map((v) => h("option", {value: String(v), text: String(v)})));
  } else if (kind === "boolean") input = h("input", {type: "checkbox", name, "data-kind": "boolean"});
  else if (kind === "integer" || kind === "number") {
    input = h("input", {type: "number", name, "data-kind": "text", min: spec.minimum, max: spec.maximum,
      step: kind === "integer" ? "1" : "any", value: required ? example(spec) : undefined});
  } else if (kind === "string" || kind === undefined) {
    input = h("input", {type: "text", name, "data-kind": "text", minlength: spec?.minLength, maxlength: spec?.maxLength,
      pattern: spec?.pattern});
  } else input = h("input", {type: "text", name, "data-kind": "text", placeholder: "JSON", value: required ? JSON.stringify(example(spec)) : undefined});
  if (required) input.required = true;
  return h("label", {class: "field"}, h("span", {class: "name", text: name}), required ? h("span", {class: "req", text: "*"}) : null,
    input, h("small", {class: "hint", text: [describe(spec), spec?.description].filter(Boolean).join(" · ")}));
}

function formData(form) {
  const data = new FormData();
  for (const input of form.querySelectorAll("[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "file") for (const file of input.files) data.append(input.name, file, file.name);
    else if (kind === "boolean") data.append(input.name, input.checked ? "true" : "false");
    else if (input.value !== "") data.append(input.name, input.value);
  }
  return data;
}

function curlLine(api, body) {
  const url = absolute(api.url);
  if (api.method === "GET") return `curl ${url}`;
  if (api.request_type === MULTIPART) {
    const fields = api.file_fields.map((f) => `-F ${f}=@FILE`).join(" ");
    return `curl -X ${api.method} ${url} ${fields}`.trim();
  }
  return `curl -X ${api.method} ${url} -H 'Content-Type: ${JSON_TYPE}' -d '${body}'`;
}

function jsonEditor(api) {
  const editor = h("textarea", {class: "json-editor", rows: 8, spellcheck: "false", "aria-label": `${api.key} JSON body`});
  editor.value = pretty(example(api.request_schema));
  const firstJson = api.samples.find((s) => s.url && s.name.endsWith(".json"));
  if (firstJson) fetchSample(firstJson).then((r) => r.text()).then((text) => {
    if (editor.dataset.touched !== "1") editor.value = text.trim();
  }).catch((error) => console.warn(error));
  editor.addEventListener("input", () => { editor.dataset.touched = "1"; });
  return editor;
}

/* The canvas is for image models: an image classifier, or an api whose samples are images. */
function drawable(api) {
  return DATA.model.algorithm === "image_classification" || api.samples.some((s) => IMAGE_NAME.test(s.name));
}

function isChat(api) {
  const messages = api.request_schema?.properties?.messages;
  return api.request_type === JSON_TYPE && isObject(messages) && mainType(messages) === "array";
}

// -- the cards ------------------------------------------------------------------------------
function httpCard(api, socketTwin) {
  const box = h("div", {class: "result"});
  const body = [];
  const after = [];
  const controls = [];
  let send;
  let pickSample;
  const curl = h("code", {class: "curl"});
  if (api.request_type === MULTIPART && api.declares_request) {
    const schema = api.request_schema;
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const props = isObject(schema.properties) ? schema.properties : {};
    const form = h("form", {class: "fields", novalidate: true, onsubmit: (e) => { e.preventDefault(); send(); }},
      Object.entries(props).map(([name, spec]) => fieldInput(name, spec, required.has(name))));
    send = (options) => call(api, {body: formData(form)}, box, options);
    pickSample = async (sample) => {
      const blob = await (await fetchSample(sample)).blob();
      const input = form.querySelector(`input[type=file][name="${CSS.escape(api.file_fields[0])}"]`);
      const transfer = new DataTransfer();
      transfer.items.add(new File([blob], sample.name, {type: blob.type}));
      input.files = transfer.files;
      return send({expected: sample.expected});
    };
    body.push(form);
    curl.textContent = curlLine(api);
    if (api.file_fields.length === 1 && drawable(api)) after.push(drawPanel(api, api.file_fields[0], socketTwin));
  } else if (api.declares_request && api.method !== "GET") {
    const editor = jsonEditor(api);
    const format = h("button", {type: "button", class: "format", text: "Format", onclick: () => {
      const value = parseJson(editor.value);
      if (value === undefined) showFailure(box, "not JSON: the server would answer 400 MASERVE.MALFORMED_REQUEST");
      else editor.value = pretty(value);
    }});
    send = (options) => {
      curl.textContent = curlLine(api, JSON.stringify(parseJson(editor.value) ?? editor.value));
      return call(api, jsonInit(editor.value), box, options);
    };
    pickSample = async (sample) => {
      editor.value = (await (await fetchSample(sample)).text()).trim();
      editor.dataset.touched = "1";
      return send({expected: sample.expected});
    };
    if (isChat(api)) body.push(chatPanel(api, () => editor.value));
    body.push(h("label", {class: "editor-label", text: `JSON body (${api.request_type})`}), editor);
    controls.push(format);
    curl.textContent = curlLine(api, "…");
  } else {
    send = (options) => call(api, {}, box, options);
    pickSample = (sample) => send({expected: sample.expected});
    curl.textContent = curlLine(api);
  }
  const head = h("div", {class: "card-head"}, h("h2", {}, h("span", {class: "method", text: api.method}), " ", h("code", {text: api.url})),
    h("span", {class: "types", text: `${api.declares_request ? api.request_type : "no body"} → ${api.response_type}`}));
  return h("section", {class: "api", "data-api": api.key}, head,
    api.declares_request ? schemaDetails("Request schema", api.request_schema) : null,
    samplesRow(api, pickSample), body,
    h("div", {class: "row actions"}, h("button", {type: "button", class: "send primary", text: `Send ${api.method}`, onclick: () => send()}), controls, curl),
    box, after, schemaDetails("Response schema", api.response_schema));
}

function socketCard(api) {
  const log = h("ol", {class: "events messages"});
  const state = h("span", {class: "ws-state", text: "not connected"});
  const text = h("div", {class: "ws-text"});
  const takesFile = api.request_type === MULTIPART;
  let ws = null;
  let sentAt = 0;
  const connect = () => new Promise((resolve, reject) => {
    if (ws && ws.readyState === WebSocket.OPEN) { resolve(ws); return; }
    const socket = new WebSocket(wsUrl(api.url));
    state.textContent = "connecting…";
    socket.onopen = () => { ws = socket; state.textContent = "connected"; resolve(socket); };
    socket.onclose = (event) => {
      if (ws === socket) ws = null;
      state.textContent = `closed (${event.code}${event.reason ? " " + event.reason : ""})`;
      reject(new Error(state.textContent));
    };
    socket.onmessage = (event) => {
      const raw = typeof event.data === "string" ? event.data : "(binary message)";
      const json = parseJson(raw);
      const delta = isObject(json) && Array.isArray(json.choices) ? json.choices[0]?.delta?.content : undefined;
      if (typeof delta === "string") text.textContent += delta;
      log.append(h("li", {class: isError(json) ? "event error-event" : "event"},
        h("span", {class: "at", text: `${(performance.now() - sentAt).toFixed(0)} ms`}),
        isError(json) ? errorBox(json) : h("code", {text: json !== undefined ? JSON.stringify(json) : raw})));
      while (log.children.length > MAX_EVENTS_SHOWN) log.firstChild.remove();
      log.scrollTop = log.scrollHeight;
    };
  });
  const transmit = async (message) => {
    try {
      const socket = await connect();
      sentAt = performance.now();
      text.textContent = "";
      log.append(h("li", {class: "event sent"}, h("span", {class: "at", text: "sent"}),
        h("code", {text: typeof message === "string" ? message.slice(0, 400) : `${bytes(message.size)} binary`})));
      socket.send(message);
    } catch (error) {
      log.append(h("li", {class: "event error-event", text: error.message}));
    }
  };
  let composer;
  let send;
  let pickSample;
  if (takesFile) {
    composer = h("input", {type: "file", class: "ws-file"});
    send = () => { if (composer.files[0]) transmit(composer.files[0]); };
    pickSample = async (sample) => transmit(await (await fetchSample(sample)).blob());
  } else {
    composer = jsonEditor(api);
    send = () => transmit(composer.value);
    pickSample = async (sample) => {
      composer.value = (await (await fetchSample(sample)).text()).trim();
      return transmit(composer.value);
    };
  }
  const head = h("div", {class: "card-head"}, h("h2", {}, h("span", {class: "method", text: "WebSocket"}), " ", h("code", {text: api.url})),
    h("span", {class: "types", text: `${takesFile ? "binary message (the file)" : "text message (JSON)"} → messages`}));
  return h("section", {class: "api", "data-api": api.key}, head, schemaDetails("Message schema", api.request_schema),
    samplesRow(api, pickSample), composer,
    h("div", {class: "row actions"}, h("button", {type: "button", class: "send primary", text: "Send message", onclick: send}),
      h("button", {type: "button", class: "disconnect", text: "Disconnect", onclick: () => ws?.close(1000)}), state),
    text, log);
}

// -- the page -------------------------------------------------------------------------------
function header() {
  const {model, facts} = DATA;
  document.getElementById("model-name").textContent = model.algorithm || model.dir || "model";
  const items = [
    ["model", model.dir], ["type", model.type], ["workers", facts.workers],
    ["grace", `${facts.grace_seconds} s`], ["drain", `${facts.drain_seconds} s`],
    ["keep-alive", `${facts.keepalive_seconds} s`], ["request timeout", `${facts.request_timeout_seconds} s`],
    ["max body", bytes(facts.max_body_bytes)], ["protocol", facts.protocol],
  ];
  if (isObject(model.metrics)) items.push(["metrics", Object.entries(model.metrics).map(([k, v]) => `${k} ${v}`).join(", ")]);
  document.getElementById("facts").replaceChildren(...items.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => h("div", {class: "fact", "data-fact": k}, h("dt", {text: k}), h("dd", {text: String(v)}))));
  const links = [[DATA.openapi_url, "OpenAPI (openapi.json)"], [DATA.health_url, "health"], [DATA.metrics_path, "metrics"]];
  document.getElementById("links").replaceChildren(...links.filter(([href]) => href).map(([href, text]) => h("a", {href, text})));
  if (model.description) document.getElementById("top").append(h("p", {class: "desc", text: model.description}));
  document.getElementById("footer").textContent =
    `maserve ${DATA.version} · every request on this page is an ordinary call of the service's apis: curl works the same way`;
}

async function pollHealth() {
  const badge = document.getElementById("health");
  try {
    const response = await fetch(DATA.health_url, {cache: "no-store"});
    const body = parseJson(await response.text());
    const ready = response.ok && isObject(body) && body.health === "true";
    badge.textContent = `health: ${ready ? "ready" : "not ready"} (${response.status})`;
    badge.className = `badge ${ready ? "ok" : "warn"}`;
    badge.dataset.health = ready ? "ready" : "not-ready";
  } catch (error) {
    badge.textContent = "health: unreachable";
    badge.className = "badge bad";
    badge.dataset.health = "unreachable";
  }
}

function main() {
  header();
  const main = document.getElementById("apis");
  const sockets = DATA.apis.filter((api) => api.websocket);
  for (const api of DATA.apis) {
    if (api.websocket) {
      main.append(socketCard(api));
      continue;
    }
    // the WebSocket twin: the same request over a socket, for the live canvas
    const twin = sockets.find((s) => s.request_type === api.request_type && canonical(s.file_fields) === canonical(api.file_fields)
      && api.file_fields.length === 1);
    main.append(httpCard(api, twin));
  }
  pollHealth();
  setInterval(() => { if (!document.hidden) pollHealth(); }, HEALTH_EVERY_MS);
  document.body.dataset.ready = "1";
}

main();
