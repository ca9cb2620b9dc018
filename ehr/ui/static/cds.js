// Shared by the EHR pages: calls to the EHR's JSON API with the session's CSRF token, and
// building DOM from untrusted data with textContent only (the one exception, a card's
// detailHtml, is sanitized by the server and is fenced by the page's CSP).
"use strict";

const mockehr = (() => {
  const meta = (name) => {
    const el = document.querySelector(`meta[name="${name}"]`);
    return el ? el.getAttribute("content") : "";
  };

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = meta("csrf-token");
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    if (response.status === 401) {
      // The access token ran out: a page load refreshes it (once; then sign in again).
      if (!sessionStorage.getItem("mockehr-reloaded")) {
        sessionStorage.setItem("mockehr-reloaded", "1");
        location.reload();
      }
      throw new Error("not signed in");
    }
    sessionStorage.removeItem("mockehr-reloaded");
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { message: text.slice(0, 200) }; }
    }
    if (!response.ok) {
      const message = (data && (data.message || data.error)) || `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function json(value) {
    return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
  }

  return { api, el, json, meta };
})();
