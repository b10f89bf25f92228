// The operations console in a real browser (Debian's chromium, driven by playwright-core):
// what an operator does with it, against a running platform.
//
//   CONSOLE_URL      the gateway, e.g. http://127.0.0.1:8000 (the page is at /console)
//   DATABASE_URL     the platform's database: the retry test leaves an event as a broker
//                    outage leaves it (psql), since no outage can be ordered on cue
//   SCREENSHOT_DIR   where each view's screenshot goes (default target/console)
//   CONSOLE_OPERATOR_TOKEN  a Kubernetes token bound to the aeropartners-operations Role
//   CONSOLE_VIEWER_TOKEN    one bound to the aeropartners-viewer Role (reads only)
//   CONSOLE_OPERATOR_NAME, CONSOLE_VIEWER_NAME  their Kubernetes user names
//   CONSOLE_PARTNER_KEY     a partner API key of CONSOLE_AFFILIATE: partners, not operators,
//                           make payments, campaigns and events
//
// The platform checks its callers as the chart does (AUTH_MODE=enforce, operators
// authenticated by a kube-apiserver). `make console-test` starts one of its own and sets them
// all.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const base = (process.env.CONSOLE_URL ?? "http://127.0.0.1:8000").replace(/\/$/, "");
const need = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} (make console-test sets it)`);
  return value;
};
const operator = { token: need("CONSOLE_OPERATOR_TOKEN"), name: need("CONSOLE_OPERATOR_NAME") };
const viewer = { token: need("CONSOLE_VIEWER_TOKEN"), name: need("CONSOLE_VIEWER_NAME") };
const affiliate = need("CONSOLE_AFFILIATE");
const partnerAuthorization = { authorization: `Bearer ${need("CONSOLE_PARTNER_KEY")}` };
/** A partner's own call, with its key (not the console's session). */
const partner = (path, body) =>
  fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...partnerAuthorization },
    body: JSON.stringify(body),
  });
const screenshots = process.env.SCREENSHOT_DIR ?? "target/console";
const origin = new URL(base).origin;

let browser;
let profile;
let context;
let page;
/** Everything the page reported as broken: uncaught errors, console errors, failed requests. */
const problems = [];
/** Every address the page asked for, to prove it needs nothing but the gateway (no CDN). */
const requested = new Set();

before(async () => {
  profile = mkdtempSync(join(tmpdir(), "console-chromium-"));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // What these machines need: no sandbox (root in a container), no GPU, and none of
    // Chromium's own connections to Google, which the closed network refuses.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  context = await browser.newContext({ viewport: { width: 1400, height: 900 }, locale: "es-ES" });
  page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("request", (request) => requested.add(new URL(request.url()).origin));
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function view(name) {
  await page.goto(`${base}/console/#${name}`);
  await page.locator(`main[data-view="${name}"]`).waitFor();
}

/** Forgets the page's reports of answers a test expects (a refusal is not a breakage). */
function expected(status) {
  const others = problems.filter((p) => !p.includes(`status of ${status}`));
  problems.splice(0, problems.length, ...others);
}

/** Signs in on the page's own form, as a person pastes `kubectl create token`. */
async function signIn(who) {
  await page.goto(`${base}/console/#pagos`);
  const form = page.getByTestId("inicio-sesion");
  await form.getByLabel("Token").fill(who.token);
  await form.getByRole("button", { name: "Iniciar sesión" }).click();
  await page.getByTestId("usuario").waitFor();
  assert.equal((await page.getByTestId("usuario").innerText()).trim(), who.name);
}

async function signOut() {
  await page.getByRole("button", { name: "Cerrar sesión" }).click();
  await page.getByTestId("inicio-sesion").waitFor();
}

/** A request the page's own script could send with the session (its cookie and CSRF token). */
function fromThePage(method, path, body) {
  return page.evaluate(
    async ({ method, path, body }) => {
      const session = await (await fetch("/console/api/sesion")).json();
      const answer = await fetch(path, {
        method,
        headers: { "content-type": "application/json", "x-csrf-token": session.csrf },
        body: JSON.stringify(body),
      });
      return { status: answer.status, body: await answer.text() };
    },
    { method, path, body },
  );
}

/** A payment of the partner's, made with its key. */
async function partnerPayment(monto) {
  const created = await partner("/pagos/", { monto, moneda: "EUR", referencia_pago: `consola-${Date.now()}` });
  assert.equal(created.status, 200, await created.clone().text());
  return (await created.json()).id_pago;
}

/** Shows payment `id` in the payments view, once in its final state. */
async function choosePayment(id) {
  await view("pagos");
  await page.locator(`[data-testid="lista-pagos"] tr[data-id="${id}"]`).click();
  await page.waitForSelector('[data-testid="pago-estado"][data-final="true"]', { timeout: 60_000 });
  return page.getByTestId("pago-elegido");
}

async function screenshot(name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

test("signed out: every view is the sign-in page, and a token the cluster does not know opens nothing", async () => {
  for (const name of ["pagos", "reportes", "salud"]) {
    await page.goto(`${base}/console/#${name}`);
    await page.getByTestId("inicio-sesion").waitFor();
    assert.equal(await page.locator("nav").count(), 0, `${name}: no view before signing in`);
  }
  // The server holds the line, not the page: its reads answer 401 without a session.
  for (const path of ["/console/api/salud", "/console/api/replicas", "/pagos"]) {
    assert.equal((await fetch(`${base}${path}`)).status, 401, path);
  }
  const form = page.getByTestId("inicio-sesion");
  await form.getByLabel("Token").fill("eyJhbGciOiJSUzI1NiJ9.e30.bm8");
  await form.getByRole("button", { name: "Iniciar sesión" }).click();
  await form.getByRole("alert").getByText(/no reconoce/).waitFor();
  await screenshot("inicio-sesion");
  expected(401);
});

test("a read-only user sees payments but cannot revert: no button, and the server refuses", async () => {
  const id = await partnerPayment(17);
  await signIn(viewer);
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === "ap_consola");
  assert.ok(session, `the session cookie: ${JSON.stringify(cookies.map((c) => c.name))}`);
  assert.equal(session.httpOnly, true, "no script reads the token");
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie.includes("ap_consola")), false);

  const chosen = await choosePayment(id);
  assert.equal((await chosen.getByTestId("pago-estado").innerText()).trim(), "EXITOSO");
  assert.equal(await chosen.getByRole("button", { name: "Revertir" }).count(), 0, "the viewer is offered no revert");
  assert.equal(await page.getByTestId("nuevo-pago").count(), 0, "operators do not make payments");
  await screenshot("lector");

  // What the hidden button would have sent, sent anyway: the payments service refuses it.
  const refused = await fromThePage("PATCH", `/pagos/${id}/revertir`, { motivo: "desde la consola" });
  assert.equal(refused.status, 403, refused.body);
  assert.match(refused.body, /create payments\/revert/);
  // Without the CSRF token, as a forged cross-site request would come, the gateway refuses.
  const forged = await page.evaluate(async (path) => (await fetch(path, { method: "PATCH", body: "{}" })).status, `/pagos/${id}/revertir`);
  assert.equal(forged, 403);
  await view("reportes");
  await page.getByTestId("version-activa").waitFor();
  assert.equal(await page.getByTestId("activar-v2").count(), 0, "nor a version switch");
  expected(403);
  await signOut();
});

test("an operator signs in; a partner's payment reaches its final state, with its trace, and is reverted from the page", async () => {
  await signIn(operator);
  const id = await partnerPayment(42.5);
  const chosen = await choosePayment(id);
  // PENDIENTE → PROCESANDO → EXITOSO as the worker and the simulated gateway answer.
  assert.equal((await chosen.getByTestId("pago-estado").innerText()).trim(), "EXITOSO");
  assert.match(await chosen.innerText(), /42,5 EUR/, "the amount as sent");
  assert.match(await chosen.innerText(), new RegExp(affiliate), "the partner's");

  // The trace shows what happened, received first.
  const trace = chosen.getByTestId("traza").locator("li");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traza"] li').length >= 3);
  const steps = await trace.allInnerTexts();
  assert.match(steps[0], /PAGO_RECIBIDO/, `first step: ${steps[0]}`);
  assert.ok(steps.some((s) => s.includes("RESULTADO_PASARELA")), `the gateway's answer: ${steps}`);
  // The per-minute chart counts it.
  await page.waitForFunction(() => parseInt(document.querySelector('[data-testid="pagos-en-ventana"]')?.textContent ?? "0", 10) >= 1);
  await screenshot("pagos");

  await chosen.getByRole("button", { name: "Revertir" }).click();
  await page.waitForFunction(() => document.querySelector('[data-testid="pago-estado"]')?.textContent?.trim() === "REVERSADO");
  // The list shows it too, under the state filter of its final state.
  await page.getByLabel("Filtrar por estado").selectOption("REVERSADO");
  await page.locator(`[data-testid="lista-pagos"] tr[data-id="${id}"]`).waitFor();
});

test("campaigns list with the chosen campaign's metrics", async () => {
  const created = await partner("/campaigns/", {
    nombre: "Campaña de la consola",
    tipo: "ADQUISICION",
    presupuesto: { monto: 5000, moneda: "USD" },
    fecha_inicio: "2026-01-01T00:00:00Z",
    fecha_fin: "2099-01-01T00:00:00Z",
  });
  assert.equal(created.status, 201, await created.clone().text());
  const campaign = await created.json();
  await view("campanas");
  const row = page.getByTestId("campanas").locator("tr", { hasText: "Campaña de la consola" });
  await row.click();
  const metrics = page.getByTestId("metricas-campana");
  await metrics.getByText("impresiones").waitFor();
  assert.match(await metrics.locator("h2").innerText(), new RegExp(campaign.id.slice(0, 8)));
  await screenshot("campanas");
});

test("switching the report version: every replica follows and the report changes shape", async () => {
  await view("reportes");
  const replicas = page.getByTestId("replica");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="replica"][data-active="v1"]').length >= 2);
  const count = await replicas.count();
  assert.ok(count >= 2, `${count} replicas shown`);
  assert.equal((await page.getByTestId("reporte-version").innerText()).trim(), "v1");

  await page.getByTestId("activar-v2").click();
  // The propagation line counts replicas until all of them serve v2.
  await page.getByTestId("propagacion").getByText(/todas en/).waitFor();
  assert.equal(await page.locator('[data-testid="replica"][data-active="v2"]').count(), count);
  assert.equal((await page.getByTestId("version-activa").innerText()).trim(), "v2");
  await page.waitForFunction(() => document.querySelector('[data-testid="reporte-version"]')?.textContent?.trim() === "v2");
  // v2 is the detailed report: figures v1 does not have.
  await page.getByTestId("reporte").getByText("tasa de éxito").waitFor();
  await screenshot("reportes");

  await page.getByTestId("activar-v1").click();
  await page.getByTestId("propagacion").getByText(/Cambio a v1: .* todas en/).waitFor();
  assert.equal(await page.locator('[data-testid="replica"][data-active="v1"]').count(), count);
});

test("a failed collector event is retried from the page and published", async () => {
  const database = process.env.DATABASE_URL;
  assert.ok(database, "DATABASE_URL: the platform's database");
  const accepted = await partner("/event-collector/events", {
    tipo_evento: "click",
    id_afiliado: affiliate,
    id_evento_cliente: `consola-${Date.now()}`,
    url: "https://tienda.example/p/1",
    fuente_evento: "API_DIRECT",
  });
  assert.equal(accepted.status, 201, await accepted.clone().text());
  const { id_evento: id } = await accepted.json();
  // Published by the relay, then put back as a broker outage leaves an event: not published,
  // three attempts, the broker's refusal, the next automatic attempt an hour away. Only the
  // retry can publish it within this test.
  const sql =
    "UPDATE event_collector.outbox SET published_at = NULL, attempts = 3, " +
    "last_error = 'broker no disponible: conexión rechazada', next_attempt_at = now() + interval '1 hour' " +
    `WHERE event_id = '${id}' AND published_at IS NOT NULL`;
  const status = async () => (await fetch(`${base}/event-collector/events/${id}/status`, { headers: partnerAuthorization })).json();
  for (let waited = 0; (await status()).estado !== "PUBLICADO"; waited += 100) {
    assert.ok(waited < 30_000, `event ${id} never published by the relay`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  execFileSync("psql", [database, "-v", "ON_ERROR_STOP=1", "-qc", sql]);
  assert.equal((await status()).estado, "FALLIDO");

  await view("colector");
  const row = page.locator(`[data-testid="evento-fallido"][data-id="${id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /FALLIDO/);
  await screenshot("colector");
  await row.getByRole("button", { name: "Reintentar" }).click();
  const outcome = page.locator(`[data-testid="reintentos"] li[data-id="${id}"]`);
  await outcome.waitFor();
  assert.match(await outcome.innerText(), /PUBLICADO/, await outcome.innerText());
  await row.waitFor({ state: "detached" });

  const published = await status();
  assert.equal(published.estado, "PUBLICADO");
  assert.ok(published.publicado_en, "published, with its time");
});

test("health: every service and the broker ready, the outbox drained", async () => {
  await view("salud");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="servicio"]').length > 0);
  const services = page.getByTestId("servicio");
  const names = await services.locator("td:first-child").allInnerTexts();
  assert.ok(names.includes("pulsar"), `the broker is listed: ${names}`);
  assert.ok(names.length >= 12, `${names.length} services: ${names}`);
  const notReady = await page.locator('[data-testid="servicio"][data-listo="false"]').allInnerTexts();
  assert.deepEqual(notReady, [], "every service ready");
  await page.getByTestId("outbox-pendientes").waitFor();
  // Two samples, so the lag charts have a line.
  await page.waitForTimeout(2500);
  await screenshot("salud");
});

test("the page worked offline: nothing but the gateway was asked, nothing broke", () => {
  assert.deepEqual([...requested], [origin], "every request went to the gateway");
  assert.deepEqual(problems, []);
});
