// CDS Services admin: discover a service, approve its prefetch and scopes (per service: the token
// for it carries its prefetch's read scopes plus these, never another service's), enable, disable
// or remove it (all through the EHR API's /api/services, with this admin session and its CSRF token).
"use strict";

(() => {
  const { api, el, json } = mockehr;
  const box = document.getElementById("services");
  const status = document.getElementById("services-status");

  function list(data) {
    if (Array.isArray(data)) return data;
    return (data && (data.services || data.items)) || [];
  }

  function words(value) {
    if (Array.isArray(value)) return value.join(" ");
    if (value && typeof value === "object") return Object.keys(value).join(" ");
    return value ? String(value) : "";
  }

  function render(service) {
    const id = service.id || service.serviceId;
    const announced = service.announcedPrefetch || {};
    const approvedRaw = service.approvedPrefetch || {};
    const approved = new Set(Array.isArray(approvedRaw) ? approvedRaw : Object.keys(approvedRaw));
    const enabled = service.enabled !== false;
    const node = el("section", { class: "block service", dataset: { service: id } },
      el("h2", {}, `${id} (${service.hook || ""})`),
      el("p", {}, `OAuth client: ${service.clientId || ""}`),
      el("p", { class: "muted" }, service.url || service.discoveryUrl || ""),
      el("p", {}, service.title || service.description || ""));
    const form = el("form", { class: "approve" });
    form.append(el("h4", {}, "Approved prefetch"));
    for (const [key, template] of Object.entries(announced)) {
      const box = el("input", { type: "checkbox", name: "prefetch", value: key, checked: approved.has(key) ? "" : null });
      form.append(el("label", { class: "check" }, box, ` ${key}: `, el("code", {}, String(template))));
    }
    const scopes = el("input", { type: "text", name: "scope", size: "70", value: words(service.scope || service.scopes) });
    form.append(el("label", {}, "Scopes for this service ", scopes));
    const save = el("button", { type: "submit" }, "Save approvals");
    form.append(save);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const prefetch = [...form.querySelectorAll("input[name=prefetch]:checked")].map((i) => i.value);
      try {
        await api("PATCH", `/api/services/${encodeURIComponent(id)}`, {
          prefetch, scope: scopes.value.trim().split(/\s+/).filter(Boolean),
        });
        status.textContent = `${id}: approvals saved`;
        await load();
      } catch (error) { status.textContent = `${id}: ${error.message}`; }
    });
    const toggle = el("button", { type: "button", class: "toggle" }, enabled ? "Disable" : "Enable");
    toggle.addEventListener("click", async () => {
      try {
        if (enabled) await api("POST", `/api/services/${encodeURIComponent(id)}/disable`);
        else await api("PATCH", `/api/services/${encodeURIComponent(id)}`, { enabled: true });
        await load();
      } catch (error) { status.textContent = `${id}: ${error.message}`; }
    });
    const remove = el("button", { type: "button", class: "remove" }, "Remove");
    remove.addEventListener("click", async () => {
      // The exchange log keeps this service's rows; the id can be registered again.
      if (!window.confirm(`Remove ${id}? Its exchange log is kept; discovering it again re-registers it.`)) return;
      try {
        await api("DELETE", `/api/services/${encodeURIComponent(id)}`);
        status.textContent = `${id}: removed`;
        await load();
      } catch (error) { status.textContent = `${id}: ${error.message}`; }
    });
    const scopeNote = service.scope ? [] : [el("p", { class: "muted" }, "No scope approved: called without fhirAuthorization.")];
    node.append(el("p", {}, `Status: ${enabled ? "enabled" : "disabled"} `, toggle, " ", remove), ...scopeNote, form);
    const raw = el("details", {}, el("summary", {}, "Registration (JSON)"), json(service));
    node.append(raw);
    return node;
  }

  async function load() {
    const data = await api("GET", "/api/services");
    box.replaceChildren(...list(data).map(render));
    if (!box.children.length) box.append(el("p", { class: "muted" }, "No CDS Service registered."));
  }

  document.getElementById("discover-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const url = document.getElementById("discovery-url").value.trim();
    status.textContent = "Discovering…";
    try {
      const approveAll = document.getElementById("approve-all").checked;
      const result = await api("POST", "/api/services", { discoveryUrl: url, approveAllPrefetch: approveAll });
      status.textContent = `Registered: ${list(result).map((s) => s.id || s.serviceId).join(", ")}`;
      await load();
    } catch (error) { status.textContent = `Discovery failed: ${error.message}`; }
  });

  load().catch((error) => { status.textContent = error.message; });
})();
