// The exchange inspector: the EHR's log of hook calls (GET /api/exchanges: one row per service
// called); a row opens that call's page (/exchanges/{hookInstance}: per service the timing
// waterfall, the request and response — tokens and signatures redacted before anything is stored).
"use strict";

(() => {
  const { api, el } = mockehr;
  const table = document.querySelector("#exchanges tbody");

  function when(value) {
    if (typeof value === "number") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19);
    return typeof value === "string" ? value.replace("T", " ").slice(0, 19) : "";
  }

  function timings(value) {
    if (!value || typeof value !== "object") return "";
    return Object.entries(value).map(([k, v]) => `${k} ${typeof v === "number" ? Math.round(v * 10) / 10 : v}`).join(", ");
  }

  // One exchange is its own server-rendered page (the timing waterfall, request and response).
  function open(hookInstance) {
    location.assign(`/exchanges/${encodeURIComponent(hookInstance)}`);
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
