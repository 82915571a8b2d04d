// Drives the tally dashboard in headless Chromium (playwright-core, Debian's
// chromium). Run by tests/tests/dashboard.rs:
//
//   NODE_PATH=<node_modules with playwright-core> node dashboard.cjs
//     <url> <chromium> <client id> <message text> <expected count>
//
// Opens the page twice: "live", and "frozen", whose requests to /api/events the
// browser aborts (the same page with its updates broken). On both it checks the
// panels, watches the client and the message (both still at 0), then prints READY;
// the test then sends the message through the pipeline. The live page must show
// the expected count for the client, the message and in the top list, pushed by
// the event stream (the page never polls counts). The frozen page gets the same
// check, which must fail: the proof that the check sees the stream and not a
// reload. Prints `RESULT <json>`; exits 0 only if live passed and frozen failed.
"use strict";

const { chromium } = require("playwright-core");

const [url, executablePath, clientId, text, expectedText] = process.argv.slice(2);
const expected = String(Number(expectedText));
const WAIT_MS = Number(process.env.DASHBOARD_WAIT_MS || 90000);
const FROZEN_GRACE_MS = 6000;

function log(...args) { console.error("[browser]", ...args); }

async function open(browser, name, breakEvents) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error" && !breakEvents) errors.push(`${name} console: ${m.text()}`); });
  if (breakEvents) await page.route("**/api/events*", (route) => route.abort());
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector("body[data-loaded=true]", { timeout: 30000 });
  for (const id of ["chart", "top", "producers", "groups", "watched"]) {
    if (!(await page.$(`#${id}`))) throw new Error(`${name}: #${id} missing`);
  }
  const title = await page.title();
  if (title !== "tally") throw new Error(`${name}: title ${JSON.stringify(title)}`);
  // Watch the client and the message before anything is sent: both at 0.
  await page.fill("#client-input", clientId);
  await page.click("#client-form button");
  await page.waitForSelector(`#watched tr[data-kind=client][data-key="${clientId}"]`, { timeout: 15000 });
  await page.fill("#message-input", text);
  await page.click("#message-form button");
  const row = await page.waitForSelector("#watched tr[data-kind=message]", { timeout: 15000 });
  const hash = await row.getAttribute("data-key");
  const before = await counts(page, hash);
  if (before.client !== "0" || before.message !== "0") {
    throw new Error(`${name}: counts before sending ${JSON.stringify(before)}, expected 0`);
  }
  if (!breakEvents) {
    // The stream that watches both is open once a tick arrives after the lookups.
    const ticks = Number(await page.evaluate(() => document.body.dataset.ticks || "0"));
    await page.waitForFunction((t) => Number(document.body.dataset.ticks || "0") > t + 1, ticks, { timeout: 20000 });
    const producers = await page.$$eval("#producers tbody tr[data-instance]", (rows) => rows.length);
    log(`${name}: loaded; ${producers} producer(s) shown; stream live`);
  }
  return { name, page, hash, errors };
}

async function counts(page, hash) {
  return page.evaluate(({ clientId, hash }) => {
    const cell = (sel) => { const n = document.querySelector(sel); return n ? n.textContent.trim() : null; };
    return {
      client: cell(`#watched tr[data-kind=client][data-key="${clientId}"] td.count`),
      message: cell(`#watched tr[data-kind=message][data-key="${hash}"] td.count`),
      top: cell(`#top li[data-hash="${hash}"] .count`),
      topText: cell(`#top li[data-hash="${hash}"] .text`),
    };
  }, { clientId, hash });
}

/// Waits until the page shows the expected counts everywhere; returns what it saw.
async function shows(view, waitMs) {
  const deadline = Date.now() + waitMs;
  let seen;
  for (;;) {
    seen = await counts(view.page, view.hash);
    const ok = seen.client === expected && seen.message === expected && seen.top === expected && seen.topText === text;
    if (ok) return { ok: true, seen };
    if (Date.now() > deadline) return { ok: false, seen };
    await new Promise((r) => setTimeout(r, 250));
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const result = {};
  try {
    const live = await open(browser, "live", false);
    const frozen = await open(browser, "frozen", true);
    console.log("READY");
    const started = Date.now();
    const l = await shows(live, WAIT_MS);
    result.live = { ...l, after_ms: Date.now() - started };
    log(`live: ${JSON.stringify(result.live)}`);
    // The frozen page had as long as the live one, and a grace period more.
    const f = await shows(frozen, FROZEN_GRACE_MS);
    result.frozen = f;
    log(`frozen: ${JSON.stringify(f)}`);
    result.errors = [...live.errors, ...frozen.errors];
    if (process.env.DASHBOARD_SCREENSHOT) {
      await live.page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true }).catch(() => {});
    }
  } catch (e) {
    result.fatal = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  const pass = !result.fatal && result.live && result.live.ok && result.frozen && !result.frozen.ok && result.errors.length === 0;
  process.exit(pass ? 0 : 1);
})();
