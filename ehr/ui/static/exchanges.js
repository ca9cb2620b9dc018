// The exchange inspector: the EHR's log of hook calls (GET /api/exchanges), and for one call the
// request and response per service, with timings (secrets are redacted by the server).
"use strict";

(() => {
  const { api, el, json } = mockehr;
  const table = document.querySelector("#exchanges tbody");
  const detail = document.getElementById("exchange-detail");

  function list(data) {
    if (Array.isArray(data)) return data;
    return (data && (data.exchanges || data.items)) || [];
  }

  function when(value) {
    if (typeof value === "number") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19);
    return typeof value === "string" ? value.replace("T", " ").slice(0, 19) : "";
  }

  async function open(hookInstance) {
    const data = await api("GET", `/api/exchanges/${encodeURIComponent(hookInstance)}`);
    document.getElementById("exchange-title").textContent = `${data.hook || "hook"} · ${hookInstance}`;
    const box = document.getElementById("exchange-services");
    box.replaceChildren();
    const services = list(data.services || data.calls || []);
    if (!services.length) box.append(json(data));
    for (const service of services) {
      const timing = service.durationMs !== undefined ? `${service.durationMs} ms` :
        (service.elapsedMs !== undefined ? `${service.elapsedMs} ms` : "");
      const head = `${service.serviceId || service.service || "service"} — ${service.status || service.outcome || ""} ${timing}`;
      const parts = el("details", { class: "exchange-service", open: "" }, el("summary", {}, head));
      for (const key of Object.keys(service)) {
        if (["serviceId", "service"].includes(key)) continue;
        const value = service[key];
        if (value !== null && typeof value === "object") {
          parts.append(el("h4", {}, key), json(value));
        } else {
          parts.append(el("p", {}, `${key}: ${value}`));
        }
      }
      box.append(parts);
    }
    detail.hidden = false;
  }

  api("GET", "/api/exchanges").then((data) => {
    for (const item of list(data)) {
      const services = Array.isArray(item.services) ? item.services.map((s) => s.serviceId || s).join(", ") : (item.serviceCount ?? "");
      const row = el("tr", { class: "exchange-row", tabindex: "0" },
        el("td", {}, when(item.startedAt || item.createdAt || item.at)),
        el("td", {}, item.hook || ""),
        el("td", {}, item.patientId || item.patient || ""),
        el("td", {}, String(services)),
        el("td", { class: "mono" }, item.hookInstance || ""));
      row.addEventListener("click", () => open(item.hookInstance));
      table.append(row);
    }
    if (!table.children.length) table.append(el("tr", {}, el("td", { colspan: "5" }, "No exchanges yet.")));
  }).catch((error) => {
    table.append(el("tr", {}, el("td", { colspan: "5", class: "error" }, error.message)));
  });
})();
