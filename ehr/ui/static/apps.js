// The chart's Apps menu: launches the chosen SMART app (EHR launch) with the patient, the
// encounter in progress, the fhirContext typed in and this launch's options, in a new window.
"use strict";

(() => {
  const { api } = mockehr;
  const chart = document.getElementById("chart");
  const menu = document.getElementById("apps-menu");
  if (!chart || !menu) return;
  const status = document.getElementById("apps-status");

  function options() {
    const chosen = {};
    const lifetime = document.getElementById("launch-lifetime").value;
    const error = document.getElementById("launch-error").value;
    if (lifetime) chosen.accessTokenLifetime = Number(lifetime);
    if (error) chosen.simulateError = error;
    return chosen;
  }

  async function launch(button) {
    // Opened now, inside the click, so that no popup blocker stops it; navigated once registered.
    const opened = window.open("about:blank", "_blank");
    const body = { url: button.dataset.url, patientId: chart.dataset.patient, options: options() };
    if (chart.dataset.openEncounter) body.encounterId = chart.dataset.openEncounter;
    const references = document.getElementById("launch-fhir-context").value.split(/[\s,]+/).filter(Boolean);
    if (references.length) body.fhirContext = references;
    status.classList.remove("error");
    try {
      const answer = await api("POST", "/ui/launch", body);
      if (opened) { opened.opener = null; opened.location.href = answer.url; }
      else location.assign(answer.url);
      status.textContent = `Launched ${button.textContent}.`;
    } catch (error) {
      if (opened) opened.close();
      status.textContent = `Launch refused: ${error.message}`;
      status.classList.add("error");
    }
  }

  for (const button of menu.querySelectorAll("button.app-launch")) {
    button.addEventListener("click", () => launch(button));
  }
})();
