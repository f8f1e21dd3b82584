// The skydm portal: HiPS trees in Aladin Lite, Objects and DiaObjects from TAP,
// and for a clicked source its cutouts (SODA), every epoch (stamps) and light curve.
// window.portal holds the page's state, for people and for the tests.

const state = (window.portal = {
  ready: false, survey: null, trees: [], objects: 0, diaObjects: 0, selected: null, errors: [],
});

const statusLine = document.getElementById("status");
const details = document.getElementById("details");

function fail(message) {
  state.errors.push(String(message));
  statusLine.textContent = String(message);
  statusLine.className = "error";
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// TAP (sync, CSV): rows as objects keyed by column name.
async function tap(adql) {
  const body = new URLSearchParams({ REQUEST: "doQuery", LANG: "ADQL", RESPONSEFORMAT: "csv", QUERY: adql });
  const reply = await fetch("/tap/sync", { method: "POST", body });
  const text = await reply.text();
  if (!reply.ok) throw new Error(`TAP: ${reply.status} ${text.slice(0, 200)}`);
  const lines = text.trim().split(/\r?\n/);
  const names = lines.shift().split(",");
  return lines.filter((l) => l).map((line) => {
    const cells = line.split(",");
    return Object.fromEntries(names.map((n, i) => [n, cells[i]]));
  });
}

async function overlay(A, aladin, table, idColumn, color, shape) {
  const [ra, dec] = aladin.getRaDec();
  const radius = Math.min(Math.max(aladin.getFov()[0], 0.01), 5);
  const rows = await tap(
    `SELECT TOP 5000 ${idColumn}, ra, dec FROM ${table} ` +
      `WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ${ra}, ${dec}, ${radius})) = 1`,
  );
  const catalog = A.catalog({ name: table, color, shape, sourceSize: 12, onClick: "showTable" });
  catalog.addSources(rows.map((r) => A.source(Number(r.ra), Number(r.dec), { ...r, table, idColumn })));
  aladin.addCatalog(catalog);
  return { catalog, count: rows.length, rows: rows.map((r) => [Number(r.ra), Number(r.dec)]) };
}

function lightCurve(points) {
  if (!points.length) return "<p>No DIA sources.</p>";
  const w = 300, h = 160, pad = 30;
  const xs = points.map((p) => p.t), ys = points.map((p) => p.f);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
  const sy = (y) => h - pad - ((y - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
  const dots = points.map((p) => `<circle cx="${sx(p.t)}" cy="${sy(p.f)}" r="3" fill="#c22"/>`).join("");
  return `<svg id="lightcurve" width="${w}" height="${h}"><text x="4" y="12" font-size="10">psfFlux (nJy) vs MJD</text>${dots}</svg>`;
}

async function select(source) {
  const d = source.data || {};
  const ra = Number(source.ra), dec = Number(source.dec);
  state.selected = { table: d.table, id: d[d.idColumn], ra, dec };
  const pos = `${ra.toFixed(6)} ${dec.toFixed(6)}`;
  let html = `<h2>${escapeHtml(d.table)} ${escapeHtml(d[d.idColumn])}</h2><p>${escapeHtml(pos)}</p>`;
  html += `<p><a id="stamps" href="/images/stamps?POS=${encodeURIComponent(pos)}&SIZE=51">every epoch (51-pixel stamps, FITS)</a></p>`;
  details.innerHTML = html + "<p>finding cutouts...</p>";
  const links = [];
  try {
    const sia = await fetch(`/sia/query?POS=${encodeURIComponent(`CIRCLE ${ra} ${dec} 0.0001`)}&MAXREC=50`);
    const xml = new DOMParser().parseFromString(await sia.text(), "application/xml");
    const fields = [...xml.getElementsByTagName("FIELD")].map((f) => f.getAttribute("name"));
    const at = fields.indexOf("obs_publisher_did"), kind = fields.indexOf("dataproduct_subtype");
    for (const tr of xml.getElementsByTagName("TR")) {
      const cells = [...tr.getElementsByTagName("TD")].map((td) => td.textContent);
      const id = cells[at];
      if (!id) continue;
      const cut = `/soda/sync?ID=${encodeURIComponent(id)}&CIRCLE=${encodeURIComponent(`${ra} ${dec} 0.003`)}`;
      links.push(`<li><a class="cutout" href="${cut}">${escapeHtml(kind >= 0 ? cells[kind] : "")} ${escapeHtml(id)}</a></li>`);
    }
  } catch (err) {
    state.errors.push(String(err));
  }
  html += `<h3>Cutouts (FITS)</h3><ul>${links.join("") || "<li>no image here</li>"}</ul>`;
  state.cutouts = links.length;
  if (d.table === "DiaObject") {
    try {
      const rows = await tap(
        `SELECT midpointMjdTai, psfFlux FROM DiaSource WHERE diaObjectId = ${Number(d.diaObjectId)} ORDER BY midpointMjdTai`,
      );
      html += `<h3>Light curve</h3>${lightCurve(rows.map((r) => ({ t: Number(r.midpointMjdTai), f: Number(r.psfFlux) })))}`;
    } catch (err) {
      html += `<p class="error">${escapeHtml(err)}</p>`;
    }
  }
  details.innerHTML = html;
}

async function main() {
  let A;
  try {
    A = (await import("/portal/aladin/aladin.js")).default;
    await A.init;
  } catch (err) {
    fail(`Aladin Lite could not start (${err}); is it installed (npm install aladin-lite)?`);
    return;
  }
  state.trees = await (await fetch("/hips/?format=json")).json();
  if (!state.trees.length) {
    fail("No HiPS yet: run `skydm hips` on the repository.");
    return;
  }
  const choice = document.getElementById("survey");
  for (const t of state.trees) choice.add(new Option(`${t.name}: ${t.obs_title}`, t.name));
  const first = state.trees.find((t) => t.name === "color") || state.trees[0];
  choice.value = first.name;
  const url = (t) => new URL(`/hips/${t.name}`, location.href).href; // Aladin adds the slash
  const fov = Number(first.hips_initial_fov) || 1;
  const aladin = A.aladin("#aladin-lite-div", {
    survey: url(first),
    target: `${first.hips_initial_ra} ${first.hips_initial_dec}`,
    fov,
    cooFrame: "ICRS",
    showReticle: false,
    showCooGridControl: false,
  });
  state.survey = first.name;
  choice.addEventListener("change", () => {
    const t = state.trees.find((x) => x.name === choice.value);
    aladin.setImageSurvey(url(t));
    state.survey = t.name;
  });
  aladin.on("objectClicked", (source) => source && select(source));
  window.portalAladin = aladin;
  const layers = {};
  for (const [table, id, color, shape, box, key] of [
    ["Object", "objectId", "#3f3", "circle", "show-objects", "objects"],
    ["DiaObject", "diaObjectId", "#f3f", "square", "show-dia", "diaObjects"],
  ]) {
    try {
      layers[table] = await overlay(A, aladin, table, id, color, shape);
      state[key] = layers[table].count;
      state[`${key === "objects" ? "object" : "dia"}Rows`] = layers[table].rows;
      document.getElementById(box).addEventListener("change", (e) =>
        e.target.checked ? layers[table].catalog.show() : layers[table].catalog.hide());
    } catch (err) {
      state.errors.push(`${table}: ${err}`);
    }
  }
  statusLine.textContent = `${state.objects} Objects, ${state.diaObjects} DiaObjects`;
  state.ready = true;
}

main().catch((err) => fail(err));
