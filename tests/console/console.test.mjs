// The operations console in a real browser (Debian's chromium, driven by playwright-core):
// what an operator does with it, against a running platform.
//
//   CONSOLE_URL      the gateway, e.g. http://127.0.0.1:8000 (the page is at /console)
//   DATABASE_URL     the platform's database: the retry test leaves an event as a broker
//                    outage leaves it (psql), since no outage can be ordered on cue
//   SCREENSHOT_DIR   where each view's screenshot goes (default target/console)
//
// `make console-test` starts a platform of its own and sets all three.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const base = (process.env.CONSOLE_URL ?? "http://127.0.0.1:8000").replace(/\/$/, "");
const screenshots = process.env.SCREENSHOT_DIR ?? "target/console";
const origin = new URL(base).origin;

let browser;
let profile;
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
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, locale: "es-ES" });
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

async function screenshot(name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

test("a payment created on the page reaches a final state, with its trace", async () => {
  await view("pagos");
  const form = page.getByTestId("nuevo-pago");
  await form.getByLabel("Afiliado").fill("AFILIADO_CONSOLA");
  await form.getByLabel("Monto").fill("42.5");
  await form.getByLabel("Moneda").selectOption("EUR");
  await form.getByRole("button", { name: "Crear pago" }).click();

  const chosen = page.getByTestId("pago-elegido");
  const state = chosen.getByTestId("pago-estado");
  await state.waitFor();
  // PENDIENTE → PROCESANDO → EXITOSO | FALLIDO as the worker and the simulated gateway answer.
  await page.waitForSelector('[data-testid="pago-estado"][data-final="true"]', { timeout: 60_000 });
  const final = (await state.innerText()).trim();
  assert.ok(["EXITOSO", "FALLIDO"].includes(final), `final state ${final}`);
  assert.match(await chosen.innerText(), /42,5 EUR/, "the amount as entered");

  // The trace shows what happened, received first.
  const trace = chosen.getByTestId("traza").locator("li");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traza"] li').length >= 3);
  const steps = await trace.allInnerTexts();
  assert.match(steps[0], /PAGO_RECIBIDO/, `first step: ${steps[0]}`);
  assert.ok(steps.some((s) => s.includes("RESULTADO_PASARELA")), `the gateway's answer: ${steps}`);

  // The list shows it too, under the state filter of its final state.
  const id = (await chosen.locator("dd code").first().innerText()).trim();
  await page.getByLabel("Filtrar por estado").selectOption(final);
  await page.locator(`[data-testid="lista-pagos"] tr[data-id="${id}"]`).waitFor();
  // The per-minute chart counts it (asked again when the payment was created).
  await page.waitForFunction(() => parseInt(document.querySelector('[data-testid="pagos-en-ventana"]')?.textContent ?? "0", 10) >= 1);
  await screenshot("pagos");
});

test("campaigns list with the chosen campaign's metrics", async () => {
  const created = await fetch(`${base}/campaigns/`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      nombre: "Campaña de la consola",
      tipo: "ADQUISICION",
      presupuesto: { monto: 5000, moneda: "USD" },
      fecha_inicio: "2026-01-01T00:00:00Z",
      fecha_fin: "2099-01-01T00:00:00Z",
      id_afiliado: "AFILIADO_CONSOLA",
    }),
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
  const accepted = await fetch(`${base}/event-collector/events`, {
    method: "POST",
    headers: { "content-type": "application/json", "user-agent": "console-test" },
    body: JSON.stringify({
      tipo_evento: "click",
      id_afiliado: "AFILIADO_CONSOLA",
      id_evento_cliente: `consola-${Date.now()}`,
      url: "https://tienda.example/p/1",
      fuente_evento: "WEB_TAG",
    }),
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
  const status = async () => (await fetch(`${base}/event-collector/events/${id}/status`)).json();
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
