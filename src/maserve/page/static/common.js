/* The prediction page's shared pieces (see page.js): constants, DOM and JSON helpers, what a schema
   asks for in words and a value that meets it, and how an answer is shown. Reads nothing at load:
   the other modules import from it, it imports from none. Text from the server is only ever set as
   textContent, never parsed as HTML. */

export const JSON_TYPE = "application/json";
export const EVENT_STREAM = "text/event-stream";
export const MAX_EVENTS_SHOWN = 400;

// -- small helpers ------------------------------------------------------------------------
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

export const pretty = (value) => JSON.stringify(value, null, 2);
export const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
export const isError = (value) => isObject(value) && typeof value.error_code === "string";
export const parseJson = (text) => { try { return JSON.parse(text); } catch { return undefined; } };
export const wsUrl = (path) => (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
export const absolute = (path) => location.origin + path;

export function bytes(n) {
  if (n >= 1024 * 1024) return `${+(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

export function canonical(value) { // JSON with sorted keys: equality of answers
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (isObject(value)) return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  return JSON.stringify(value);
}

function types(schema) {
  const type = isObject(schema) ? schema.type : undefined;
  return Array.isArray(type) ? type : type === undefined ? [] : [type];
}

export function mainType(schema) {
  const list = types(schema).filter((t) => t !== "null");
  if (list.length) return list[0];
  if (isObject(schema) && isObject(schema.properties)) return "object";
  if (isObject(schema) && schema.items) return "array";
  return undefined;
}

// -- what a schema asks for, in words, and a value that meets it ---------------------------
export function describe(schema, depth = 0) {
  if (!isObject(schema) || depth > 4) return "";
  if (schema.type === "file") return "a file";
  const parts = [];
  const list = types(schema);
  if ("const" in schema) parts.push(`exactly ${JSON.stringify(schema.const)}`);
  else if (Array.isArray(schema.enum)) parts.push(`one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`);
  else if (list.length) parts.push(list.join(" or "));
  const low = schema.exclusiveMinimum ?? schema.minimum;
  const high = schema.exclusiveMaximum ?? schema.maximum;
  if (low !== undefined) parts.push(`${"exclusiveMinimum" in schema ? ">" : "≥"} ${low}`);
  if (high !== undefined) parts.push(`${"exclusiveMaximum" in schema ? "<" : "≤"} ${high}`);
  if (schema.minLength !== undefined) parts.push(`at least ${schema.minLength} characters`);
  if (schema.maxLength !== undefined) parts.push(`at most ${schema.maxLength} characters`);
  if (schema.pattern !== undefined) parts.push(`matching /${schema.pattern}/`);
  if (schema.minItems !== undefined && schema.minItems === schema.maxItems) parts.push(`${schema.minItems} items`);
  else {
    if (schema.minItems !== undefined) parts.push(`at least ${schema.minItems} items`);
    if (schema.maxItems !== undefined) parts.push(`at most ${schema.maxItems} items`);
  }
  if (isObject(schema.items)) {
    const each = describe(schema.items, depth + 1);
    if (each) parts.push(`each ${each}`);
  }
  for (const key of ["anyOf", "oneOf"]) {
    if (Array.isArray(schema[key])) parts.push(`any of (${schema[key].map((s) => describe(s, depth + 1) || "anything").join(" | ")})`);
  }
  return parts.join(", ");
}

export function example(schema, depth = 0) {
  if (!isObject(schema) || depth > 8) return null;
  if ("const" in schema) return schema.const;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if ("example" in schema) return schema.example;
  if ("default" in schema) return schema.default;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  for (const key of ["anyOf", "oneOf"]) {
    if (Array.isArray(schema[key]) && schema[key].length) {
      const option = schema[key].find((s) => !types(s).includes("null")) || schema[key][0];
      return example(option, depth + 1);
    }
  }
  if (Array.isArray(schema.allOf) && schema.allOf.length) return example(schema.allOf[0], depth + 1);
  switch (mainType(schema)) {
    case "object": {
      const props = isObject(schema.properties) ? schema.properties : {};
      const required = Array.isArray(schema.required) ? schema.required : [];
      const names = required.length ? required : Object.keys(props);
      return Object.fromEntries(names.map((name) => [name, example(props[name], depth + 1)]));
    }
    case "array": {
      const count = Math.min(Math.max(schema.minItems || 1, 1), 16);
      return Array.from({length: count}, () => example(schema.items, depth + 1));
    }
    case "integer":
    case "number": {
      const step = mainType(schema) === "integer" ? 1 : 0.5;
      if (schema.minimum !== undefined) return schema.minimum;
      if (schema.exclusiveMinimum !== undefined) return schema.exclusiveMinimum + step;
      if (schema.maximum !== undefined) return Math.min(schema.maximum, 0);
      if (schema.exclusiveMaximum !== undefined) return schema.exclusiveMaximum - step;
      return 0;
    }
    case "string": return "x".repeat(schema.minLength || 0);
    case "boolean": return false;
    default: return null;
  }
}

// -- answers --------------------------------------------------------------------------------
/* The one scalar of an answer, shown large: {"mnist_result": 7} → ["mnist_result", 7]; fields the
   response schema fixes ("object": "list") say nothing about this answer and do not count. */
export function scalarOf(value, schema) {
  if (!isObject(value)) return null;
  const props = isObject(schema) && isObject(schema.properties) ? schema.properties : {};
  const scalars = Object.entries(value).filter(([k, v]) => ["string", "number", "boolean"].includes(typeof v)
    && !(isObject(props[k]) && "const" in props[k]));
  return scalars.length === 1 ? scalars[0] : null;
}

export function errorBox(body) {
  return h("div", {class: "error", role: "alert"},
    h("strong", {class: "error-code", text: body.error_code}), " ",
    h("span", {class: "error-msg", text: String(body.error_msg ?? "")}));
}

function meta(items) {
  return h("div", {class: "meta"}, items.filter(Boolean).map(([cls, text]) => h("span", {class: cls, text})));
}

/* One answer: {status, statusText, ms, requestId, text, json, via, expected, schema} where status is
   null for a WebSocket message and `expected` is undefined unless a sample declares one. */
export function showAnswer(box, answer) {
  const failed = isError(answer.json) || (answer.status !== null && (answer.status < 200 || answer.status >= 300));
  box.className = `result ${failed ? "bad" : "ok"}`;
  box.dataset.status = answer.status === null ? "message" : String(answer.status);
  const status = answer.status === null ? "WebSocket message" : `${answer.status} ${answer.statusText || ""}`.trim();
  const parts = [meta([
    ["status", status],
    ["latency", `${answer.ms.toFixed(1)} ms`],
    answer.requestId && ["request-id", `request id ${answer.requestId}`],
    answer.via && ["via", answer.via],
  ])];
  if (isError(answer.json)) parts.push(errorBox(answer.json));
  else if (!failed) {
    const scalar = scalarOf(answer.json, answer.schema);
    if (scalar) parts.push(h("div", {class: "big"}, h("span", {class: "big-key", text: scalar[0]}), h("span", {class: "big-value", text: String(scalar[1])})));
  }
  parts.push(h("pre", {class: "json", text: answer.json !== undefined ? pretty(answer.json) : answer.text}));
  if (answer.expected !== undefined && answer.expected !== null) {
    const same = answer.json !== undefined && canonical(answer.json) === canonical(answer.expected);
    parts.push(h("div", {class: `expected ${same ? "same" : "differs"}`},
      same ? "✓ the answer samples/expected.json gives" : `✗ samples/expected.json expects ${JSON.stringify(answer.expected)}`));
  }
  box.replaceChildren(...parts);
}

export function showFailure(box, message) {
  box.className = "result bad";
  box.dataset.status = "network";
  box.replaceChildren(h("div", {class: "error", role: "alert"}, h("strong", {class: "error-code", text: "network"}), " ", h("span", {class: "error-msg", text: message})));
}

export const jsonInit = (text) => ({headers: {"Content-Type": JSON_TYPE}, body: text});

export async function fetchSample(sample) {
  const response = await fetch(sample.url, {cache: "no-store"});
  if (!response.ok) throw new Error(`${sample.url}: ${response.status}`);
  return response;
}
