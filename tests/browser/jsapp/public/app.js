"use strict";
// A SMART app as its developers write it with fhirclient.js: every library setting at its default
// (PKCE "ifSupported", refreshTokenWithClientId false, the token in sessionStorage). Each result
// goes into the page as JSON for the test to read; nothing here knows about mockehr.
(async () => {
  const show = (id, value) => { document.getElementById(id).textContent = JSON.stringify(value); };
  let step = "ready";
  try {
    const client = await FHIR.oauth2.ready();

    step = "patient.read";
    const patient = await client.patient.read();
    show("patient", { context: client.patient.id, resourceType: patient.resourceType, id: patient.id });

    step = "request with paging";
    // pageLimit 2: the library follows the Bundle's `next` link once and answers both pages.
    const pages = await client.request(`Observation?patient=${client.patient.id}&_count=2`, { pageLimit: 2 });
    show("observations", pages.map((bundle) => ({
      next: (bundle.link || []).some((link) => link.relation === "next"),
      ids: (bundle.entry || []).map((entry) => entry.resource.id),
      subjects: (bundle.entry || []).map((entry) => entry.resource.subject && entry.resource.subject.reference),
    })));

    step = "user.read";
    const user = await client.user.read();
    show("user", { fhirUser: client.user.fhirUser, resourceType: user.resourceType, id: user.id });

    step = "refresh";
    const before = client.state.tokenResponse;
    await client.refresh();
    const after = client.state.tokenResponse;
    show("refresh", {
      newAccessToken: after.access_token !== before.access_token,
      newRefreshToken: after.refresh_token !== before.refresh_token,
      scope: after.scope,
    });

    step = "patient.read after refresh";
    const again = await client.patient.read();
    show("after-refresh", { resourceType: again.resourceType, id: again.id });
    step = "done";
    document.getElementById("done").hidden = false;
  } catch (error) {
    show("error", `${step}: ${error}`);
  } finally {
    document.getElementById("step").textContent = step;
  }
})();
