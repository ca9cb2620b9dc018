// The exchange inspector: the EHR's log of hook calls (GET /api/exchanges: one row per service
// called), and for one call the request and response per service, with timings (tokens and
// signatures are redacted by the server before anything is stored).
"use strict";

(() => {
  const { api, el, json } = mockehr;
  const table = document.querySelector("#exchanges tbody");
  const detail = document.getElementById("exchange-detail");

  function when(value) {
    if (typeof value === "number") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19);
    return typeof value === "string" ? value.replace("T", " ").slice(0, 19) : "";
  }

  function timings(value) {
    if (!value || typeof value !== "object") return "";
    return Object.entries(value).map(([k, v]) => `${k} ${typeof v === "number" ? Math.round(v * 10) / 10 : v}`).join(", ");
  }

  async function open(hookInstance) {
    const data = await api("GET", `/api/exchanges/${encodeURIComponent(hookInstance)}`);
    document.getElementById("exchange-title").textContent =
      `${data.hook} · Patient/${data.patientId} · ${data.userId || ""} · ${hookInstance}`;
    const box = document.getElementById("exchange-services");
    box.replaceChildren();
    for (const service of data.services || []) {
      const head = `${service.serviceId} — ${service.status}${service.httpStatus ? ` (HTTP ${service.httpStatus})` : ""}` +
        `${service.reason ? ` — ${service.reason}` : ""}`;
      const parts = el("details", { class: "exchange-service", open: "" }, el("summary", {}, head));
      parts.append(el("p", {}, `Timings (ms): ${timings(service.timings)}`));
      if (service.tokenScope) parts.append(el("p", {}, `Token scope: ${service.tokenScope}`));
      parts.append(el("h4", {}, "Request sent"), json(service.request));
      parts.append(el("h4", {}, "Response received"), json(service.response));
      if ((service.dropped || []).length) parts.append(el("h4", {}, "Cards dropped"), json(service.dropped));
      if ((service.notes || []).length) parts.append(el("h4", {}, "Notes"), json(service.notes));
      box.append(parts);
    }
    detail.hidden = false;
    detail.scrollIntoView();
  }

  api("GET", "/api/exchanges").then((data) => {
    for (const item of (data && data.exchanges) || []) {
      const row = el("tr", { class: "exchange-row", tabindex: "0", dataset: { hookInstance: item.hookInstance } },
        el("td", {}, when(item.createdAt)),
        el("td", {}, item.hook),
        el("td", { class: "mono" }, item.patientId || ""),
        el("td", {}, `${item.serviceId}: ${item.status} (${item.cardCount} cards)`),
        el("td", {}, timings(item.timings)),
        el("td", { class: "mono" }, item.hookInstance));
      row.addEventListener("click", () => open(item.hookInstance));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(item.hookInstance); });
      table.append(row);
    }
    if (!table.children.length) table.append(el("tr", {}, el("td", { colspan: "6" }, "No exchanges yet.")));
  }).catch((error) => {
    table.append(el("tr", {}, el("td", { colspan: "6", class: "error" }, error.message)));
  });
})();
