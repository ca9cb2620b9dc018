// The chart: fires patient-view when it opens, order-select / order-sign from the order form,
// and shows the cards grouped by indicator, with suggestions, links, SMART launches, dismissal.
"use strict";

(() => {
  const { api, el, meta } = mockehr;
  const chart = document.getElementById("chart");
  if (!chart) return;
  const patientId = chart.dataset.patient;
  const encounterId = chart.dataset.encounter || undefined;
  const userRef = meta("user-ref");
  const INDICATORS = ["critical", "warning", "info"];
  const status = document.getElementById("cds-status");
  const cardsBox = document.getElementById("cards");

  async function fire(hook, context) {
    const body = { userId: userRef, patientId };
    if (encounterId) body.encounterId = encounterId;
    if (context) body.context = context;
    return api("POST", `/api/hooks/${hook}`, body);
  }

  function show(hook, result) {
    // One group per indicator, critical first; cards of every service of this hook call.
    const groups = Object.fromEntries(INDICATORS.map((i) => [i, []]));
    const notes = [];
    for (const service of (result && result.services) || []) {
      if (service.status !== "ok") {
        notes.push(`${service.serviceId}: ${service.reason || "no answer"}`);
        continue;
      }
      for (const dropped of service.dropped || []) {
        notes.push(`${service.serviceId}: card ${dropped.index} not shown (${dropped.reason})`);
      }
      if (service.systemActionsResult && !service.systemActionsResult.applied) {
        notes.push(`${service.serviceId}: systemActions not applied (${service.systemActionsResult.reason})`);
      }
      (service.cards || []).forEach((card, index) => {
        const indicator = INDICATORS.includes(card.indicator) ? card.indicator : "info";
        groups[indicator].push({ card, index, serviceId: service.serviceId, hookInstance: result.hookInstance });
      });
    }
    const block = el("div", { class: "hook-result", dataset: { hook } }, el("h3", {}, `${hook}`));
    let count = 0;
    for (const indicator of INDICATORS) {
      if (!groups[indicator].length) continue;
      const group = el("div", { class: `indicator-group ${indicator}`, dataset: { indicator } },
        el("h4", {}, indicator));
      for (const item of groups[indicator]) { group.append(renderCard(item)); count += 1; }
      block.append(group);
    }
    if (!count) block.append(el("p", { class: "muted" }, "No cards."));
    for (const note of notes) block.append(el("p", { class: "service-note" }, note));
    const previous = cardsBox.querySelector(`.hook-result[data-hook="${hook}"]`);
    if (previous) previous.replaceWith(block); else cardsBox.append(block);
  }

  // CDS Hooks 2.0 makes uuid optional on cards and suggestions: one without is named by its
  // position in the service's recorded answer (the server refuses a position for one with a uuid).
  function cardName(card, index) {
    return card.uuid ? { cardUuid: card.uuid } : { cardIndex: index };
  }

  function renderCard({ card, index, serviceId, hookInstance }) {
    const node = el("article", { class: `card ${card.indicator || "info"}`, dataset: { uuid: card.uuid || "", service: serviceId } });
    node.append(el("p", { class: "summary" }, card.summary || ""));
    if (card.source && card.source.label) {
      node.append(el("p", { class: "source" }, `Source: ${card.source.label}`));
    }
    if (card.detailHtml) {
      const detail = el("div", { class: "detail" });
      // detailHtml is the server's sanitized rendering of the card's markdown (no raw HTML, no
      // script, only https links); the CSP forbids inline script besides.
      detail.innerHTML = card.detailHtml;
      for (const a of detail.querySelectorAll("a")) { a.target = "_blank"; a.rel = "noopener noreferrer"; }
      node.append(detail);
    }
    const actions = el("div", { class: "actions" });
    for (const [position, suggestion] of (card.suggestions || []).entries()) {
      const named = suggestion.uuid ? { suggestionUuid: suggestion.uuid } : { suggestionIndex: position };
      const button = el("button", { type: "button", class: "accept" + (suggestion.isRecommended ? " recommended" : "") },
        `Accept: ${suggestion.label || "suggestion"}`);
      button.addEventListener("click", () => accept(node, button, hookInstance, serviceId, { ...cardName(card, index), ...named }, suggestion));
      actions.append(button);
    }
    for (const link of card.links || []) {
      if (link.type === "smart") {
        const button = el("button", { type: "button", class: "smart-link" }, `Launch: ${link.label || "app"}`);
        button.addEventListener("click", () => launch(node, link));
        actions.append(button);
      } else if (typeof link.url === "string" && link.url.startsWith("https://")) {
        actions.append(el("a", { class: "link", href: link.url, target: "_blank", rel: "noopener noreferrer" }, link.label || link.url));
      }
    }
    const dismiss = el("button", { type: "button", class: "dismiss" }, "Dismiss");
    dismiss.addEventListener("click", () => dismissCard(node, hookInstance, serviceId, card, index));
    actions.append(dismiss);
    node.append(actions, el("p", { class: "card-status" }));
    return node;
  }

  function setStatus(node, text, isError) {
    const line = node.querySelector(".card-status");
    line.textContent = text;
    line.classList.toggle("error", Boolean(isError));
  }

  async function accept(node, button, hookInstance, serviceId, names, suggestion) {
    button.disabled = true;
    try {
      await api("POST", "/api/suggestions/accept", { hookInstance, serviceId, ...names, userId: userRef });
      setStatus(node, `Accepted: ${suggestion.label || "suggestion"}`);
      node.classList.add("accepted");
      for (const b of node.querySelectorAll("button")) b.disabled = true;
      // A suggestion deleting the draft being signed: that draft was never stored (the FHIR
      // server's delete of it changed nothing), so accepting it means discarding the draft.
      // (order-select's cards may remove the draft too, before any signature.)
      const current = pending ? pending.ref : draftRef();
      if (current && removesDraft(suggestion, current)) endSignature("The draft was removed; nothing was ordered.");
      await refreshSections();
    } catch (error) {
      button.disabled = false;
      setStatus(node, `Not applied: ${error.message}`, true);
    }
  }

  async function refreshSections() {
    const response = await fetch(`/patients/${encodeURIComponent(patientId)}/sections`, {
      credentials: "same-origin", cache: "no-store",
    });
    if (!response.ok) return;
    // Server-rendered (autoescaped) HTML of the chart's own sections.
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("sections");
    const current = document.getElementById("sections");
    if (fresh && current) current.replaceWith(document.importNode(fresh, true));
  }

  async function launch(node, link) {
    const opened = window.open("about:blank", "_blank");
    try {
      const body = { url: link.url, patientId };
      if (encounterId) body.encounterId = encounterId;
      if (typeof link.appContext === "string") body.appContext = link.appContext;
      const answer = await api("POST", "/ui/launch", body);
      if (opened) { opened.opener = null; opened.location.href = answer.url; }
      else location.assign(answer.url);
      setStatus(node, `Launched ${link.label || "the app"}`);
    } catch (error) {
      if (opened) opened.close();
      setStatus(node, `Launch refused: ${error.message}`, true);
    }
  }

  function dismissCard(node, hookInstance, serviceId, card, index) {
    const dialog = document.getElementById("dismiss-dialog");
    const select = document.getElementById("dismiss-reason");
    select.replaceChildren(el("option", { value: "" }, "(no reason)"));
    (card.overrideReasons || []).forEach((reason, index) => {
      select.append(el("option", { value: String(index) }, reason.display || reason.code || "reason"));
    });
    document.getElementById("dismiss-comment").value = "";
    dialog.onclose = async () => {
      if (dialog.returnValue !== "ok") return;
      const body = { hookInstance, serviceId, ...cardName(card, index), outcome: "overridden", userId: userRef };
      if (select.value !== "") {
        const chosen = card.overrideReasons[Number(select.value)];
        body.overrideReason = { code: chosen.code, system: chosen.system, display: chosen.display };
      }
      const comment = document.getElementById("dismiss-comment").value.trim();
      if (comment) body.userComment = comment;
      try {
        const answer = await api("POST", "/api/feedback", body);
        node.classList.add("dismissed");
        const delivered = answer && answer.feedback && answer.feedback.delivered;
        setStatus(node, delivered ? "Dismissed (feedback sent)" : `Dismissed (${(answer && answer.feedback && answer.feedback.error) || "no feedback sent"})`);
        for (const b of node.querySelectorAll("button")) b.disabled = true;
      } catch (error) {
        setStatus(node, `Feedback not sent: ${error.message}`, true);
      }
    };
    dialog.showModal();
  }

  // --- the order form ---------------------------------------------------------------------
  const kind = document.getElementById("order-kind");
  const item = document.getElementById("order-item");
  const orderStatus = document.getElementById("order-status");
  let draftId = null;

  function syncItems() {
    let first = null;
    for (const option of item.options) {
      option.hidden = option.dataset.kind !== kind.value;
      if (!option.hidden && first === null) first = option;
    }
    if (item.selectedOptions[0] && item.selectedOptions[0].hidden && first) item.value = first.value;
    draftId = null;
  }

  function draftRef() {
    if (!draftId) return null;
    return `${kind.value === "medication" ? "MedicationRequest" : "ServiceRequest"}/${draftId}`;
  }

  function draftOrder() {
    const option = item.selectedOptions[0];
    const [system, code] = option.value.split("|");
    const concept = { coding: [{ system, code, display: option.textContent }], text: option.textContent };
    if (!draftId) draftId = `draft-${crypto.randomUUID()}`;
    const common = {
      id: draftId,
      status: "draft",
      intent: "order",
      subject: { reference: `Patient/${patientId}` },
      authoredOn: new Date().toISOString().slice(0, 10),
      requester: { reference: userRef },
    };
    if (encounterId) common.encounter = { reference: `Encounter/${encounterId}` };
    if (kind.value === "medication") {
      return { resourceType: "MedicationRequest", ...common, medicationCodeableConcept: concept };
    }
    return {
      resourceType: "ServiceRequest", ...common, code: concept,
      category: [{ coding: [{ system: "http://snomed.info/sct", code: "108252007", display: "Laboratory procedure" }] }],
    };
  }

  // --- signing: order-sign, the cards decided, then the order written (POST /ui/orders) ----
  const signature = document.getElementById("signature");
  const signatureText = document.getElementById("signature-text");
  const confirmButton = document.getElementById("order-confirm");
  let pending = null; // {ref, draftId, kind, system, code, hookInstance}

  function removesDraft(suggestion, ref) {
    return (suggestion.actions || []).some((action) => action.type === "delete" &&
      (Array.isArray(action.resourceId) ? action.resourceId : [action.resourceId]).includes(ref));
  }

  function endSignature(message) {
    pending = null;
    draftId = null; // the next order is a new draft
    signature.hidden = true;
    orderStatus.textContent = message;
  }

  async function fireOrder(hook) {
    const draft = draftOrder();
    const context = { draftOrders: { resourceType: "Bundle", type: "collection", entry: [{ resource: draft }] } };
    if (hook === "order-select") context.selections = [`${draft.resourceType}/${draft.id}`];
    orderStatus.textContent = `Calling ${hook}…`;
    try {
      const result = await fire(hook, context);
      show(hook, result);
      if (hook !== "order-sign") { orderStatus.textContent = ""; return; }
      const [system, code] = item.value.split("|");
      pending = { ref: `${draft.resourceType}/${draft.id}`, draftId: draft.id, kind: kind.value, system, code,
        hookInstance: result.hookInstance };
      const cards = (result.services || []).reduce((n, s) => n + (s.cards || []).length, 0);
      orderStatus.textContent = "";
      signatureText.textContent = cards
        ? `Review the ${cards} card(s) above: accept a suggestion or dismiss with a reason, then confirm the signature of ${item.selectedOptions[0].textContent}.`
        : `No CDS concerns. Confirm the signature of ${item.selectedOptions[0].textContent}.`;
      confirmButton.disabled = false;
      signature.hidden = false;
    } catch (error) {
      orderStatus.textContent = `${hook} failed: ${error.message}`;
    }
  }

  async function confirmSignature() {
    if (!pending) return;
    confirmButton.disabled = true;
    const body = { patientId, hookInstance: pending.hookInstance, draftId: pending.draftId, kind: pending.kind,
      system: pending.system, code: pending.code };
    if (encounterId) body.encounterId = encounterId;
    try {
      const written = await api("POST", "/ui/orders", body);
      endSignature(`Signed: ${written.resourceType}/${written.id} (${written.status}).`);
      await refreshSections();
    } catch (error) {
      confirmButton.disabled = false;
      signatureText.textContent = `Not signed: ${error.message}`;
    }
  }

  kind.addEventListener("change", () => { syncItems(); if (pending) endSignature("Cancelled; nothing was ordered."); });
  item.addEventListener("change", () => { draftId = null; if (pending) endSignature("Cancelled; nothing was ordered."); });
  confirmButton.addEventListener("click", confirmSignature);
  document.getElementById("order-cancel").addEventListener("click", () => endSignature("Cancelled; nothing was ordered."));
  document.getElementById("order-select").addEventListener("click", () => fireOrder("order-select"));
  document.getElementById("order-sign").addEventListener("click", () => fireOrder("order-sign"));
  syncItems();

  // --- patient-view when the chart opens --------------------------------------------------
  fire("patient-view")
    .then((result) => { status.textContent = ""; show("patient-view", result); })
    .catch((error) => { status.textContent = `CDS Services could not be asked: ${error.message}`; });
})();
