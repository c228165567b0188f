// Drives Debian's headless Chromium (through playwright-core, from npm)
// through Warden's operator console as an operator would (docs/console.md):
//
//   node console.mjs <config.json>
//
// The config names the management URL, the data-plane URL, an admin key, a
// metrics-role key, a spare admin key (revoked mid-session), the XSS probe
// text and the screenshot folder. Prints one JSON line of what it saw; the
// e2e test (console.rs) asserts on it. A step that fails prints its name.
import { createRequire } from "node:module";
import path from "node:path";
import fs from "node:fs";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(process.env.WARDEN_NODE_MODULES, "x.js"));
const { chromium } = require("playwright-core");

const seen = { steps: [] };
const step = (name) => seen.steps.push(name);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1360, height: 900 } });
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const page = await context.newPage();
  const origin = new URL(cfg.admin).origin;
  seen.offOrigin = [];
  seen.pageErrors = [];
  seen.consoleErrors = [];
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && !u.startsWith("blob:") && new URL(u).origin !== origin) seen.offOrigin.push(u);
  });
  page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
  page.on("console", (m) => {
    // Refused calls (401/403) are expected in this script; anything else is not.
    if (m.type() === "error" && !/status of 40[13]/.test(m.text())) seen.consoleErrors.push(m.text());
  });
  const shot = async (name) => page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
  const api = (key) => ({ headers: { authorization: `Bearer ${key}` } });

  // --- Sign-in: the page, its policy, a wrong credential.
  const response = await page.goto(`${cfg.admin}/console`, { waitUntil: "networkidle" });
  seen.status = response.status();
  seen.csp = response.headers()["content-security-policy"];
  await page.waitForSelector("#signin-form");
  await shot("signin");
  // No client certificate here: the certificate button says so.
  await page.click("#signin-certificate");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
  seen.noCertificate = await page.textContent("#signin-error");
  // "Skip to content" moves the focus and is not a page.
  await page.focus(".skip");
  await page.keyboard.press("Enter");
  seen.skipFocus = await page.evaluate(() => document.activeElement.id);
  await page.fill("#credential", "wdn_aaaaaaaaaaaa_notarealsecretnotarealsecretnotarealsec");
  await page.click("#signin-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
  seen.wrongCredential = await page.textContent("#signin-error");
  seen.wrongCredentialNavHidden = await page.isHidden("#nav");
  step("wrong credential refused");

  // --- Sign in as admin: the overview.
  await page.fill("#credential", cfg.adminKey);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#stat-requests");
  seen.storage = await page.evaluate(() => ({ cookies: document.cookie, local: localStorage.length, session: sessionStorage.length }));
  seen.navAdmin = await page.$$eval("#nav a", (as) => as.filter((a) => !a.hidden).map((a) => a.textContent));
  const before = Number((await page.textContent("#stat-requests")).replace(/,/g, ""));
  step("signed in");

  // --- A burst on the data plane: answers, refusals, a ban.
  const data = context.request;
  const iris = { instances: [[5.1, 3.5, 1.4, 0.2]] };
  let answered = 0;
  for (let i = 0; i < 60; i++) {
    const r = await data.post(`${cfg.data}/v1/models/iris:predict`, { ...api(cfg.adminKey), data: iris });
    if (r.status() === 200) answered++;
  }
  for (let i = 0; i < 15; i++) {
    await data.post(`${cfg.data}/v1/models/iris:predict`, { ...api(cfg.adminKey), data: { instances: [[5.1, 3.5, "x", 0.2]] } });
  }
  for (let i = 0; i < 8; i++) {
    await data.post(`${cfg.data}/v1/models/iris:predict`, { headers: { "x-api-key": "wdn_bbbbbbbbbbbb_wrongwrongwrongwrongwrongwrongwrongwrongwr" }, data: iris });
  }
  seen.answered = answered;
  // The overview refreshes every 5 s: the counters and charts move.
  await page.waitForFunction(
    (b) => Number(document.querySelector("#stat-requests").textContent.replace(/,/g, "")) >= b + 83,
    before,
    { timeout: 20000 },
  );
  seen.requestsBefore = before;
  seen.requestsAfter = Number((await page.textContent("#stat-requests")).replace(/,/g, ""));
  await page.waitForFunction(() => document.querySelectorAll("#chart-refusals .u-legend .u-series").length >= 3, null, { timeout: 15000 });
  seen.refusalLegend = await page.$$eval("#chart-refusals .u-legend .u-series .u-label", (ls) => ls.map((l) => l.textContent));
  seen.charts = await page.$$eval(".uplot canvas", (cs) => cs.length);
  seen.modelsReady = await page.$$eval("table", (ts) => ts.map((t) => t.innerText).join("\n"));
  await shot("overview");
  step("overview moved");

  // --- Models: a card as tables; the XSS probe in the description is text.
  await page.click("#nav a[data-page=models]");
  await page.waitForSelector("button[data-model=iris]");
  await page.click("button[data-model=iris]");
  await page.waitForSelector("p.description");
  seen.description = await page.textContent("p.description");
  seen.modelTables = await page.$$eval("table caption", (cs) => cs.map((c) => c.textContent));
  await shot("models");
  step("models");

  // --- Access: create a key (XSS in its name), the secret once, revoke it.
  await page.click("#nav a[data-page=access]");
  await page.waitForSelector("#create-key");
  await page.fill("#key-name", cfg.xssName);
  await page.selectOption("#key-role", "predict");
  await page.fill("#key-models", "iris");
  await page.click("#create-key button[type=submit]");
  await page.waitForSelector("[data-secret]");
  seen.createdSecret = await page.textContent("[data-secret]");
  const row = page.locator("#keys tbody tr", { hasText: cfg.xssName });
  seen.keyRowText = await row.first().innerText();
  await shot("access");
  await row.first().locator("button", { hasText: "Revoke" }).click();
  await row.first().locator("button", { hasText: "Confirm revoke" }).click();
  await page.waitForFunction(() => [...document.querySelectorAll("#keys tbody tr")].some((r) => r.textContent.includes("onerror") && r.textContent.includes("revoked")));
  step("access");

  // --- Audit: filter, verify the chain.
  await page.click("#nav a[data-page=audit]");
  await page.waitForSelector("#audit-filter");
  await page.fill("#audit-outcome", "validation_failed");
  await page.click("#audit-filter button[type=submit]");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("table tbody tr")];
    return rows.length >= 1 && rows.every((r) => r.textContent.includes("validation_failed"));
  });
  seen.auditRows = await page.$$eval("table tbody tr", (rs) => rs.map((r) => r.innerText));
  await page.click("#verify-chain");
  await page.waitForSelector("#verify-summary");
  seen.verify = await page.textContent("#verify-summary");
  await shot("audit");
  step("audit");

  // --- Abuse: the ban from the burst, lifted.
  await page.click("#nav a[data-page=abuse]");
  await page.waitForSelector("#bans table, #bans .empty");
  seen.bansBefore = await page.$$eval("#bans tbody tr", (rs) => rs.map((r) => r.innerText));
  await page.waitForSelector("#quotas h2");
  seen.quotaRows = await page.$$eval("#quotas tbody tr", (rs) => rs.map((r) => r.innerText));
  await shot("abuse");
  const ban = page.locator("#bans tbody tr").first();
  await ban.locator("button", { hasText: "Lift" }).click();
  await ban.locator("button", { hasText: "Confirm lift" }).click();
  await page.waitForSelector("#bans .empty");
  seen.bansAfter = await page.$$eval("#bans tbody tr", (rs) => rs.length);
  step("abuse");

  // --- A session whose key is revoked stops at its next action.
  await page.click("#signout");
  await page.fill("#credential", cfg.spareKey);
  await page.click("#signin-form button[type=submit]");
  // Signed in again on the page it was on (Abuse).
  await page.waitForSelector("#bans h2");
  const revoke = await data.post(`${cfg.admin}/admin/keys/${cfg.spareKeyId}/revoke`, api(cfg.adminKey));
  seen.spareRevoked = revoke.status();
  // The key cache forgets a revoked key at once on this replica.
  // Its next call (the Abuse page may still be loading quotas: that call
  // counts too) is refused, and the page signs out.
  try {
    await page.click("#nav a[data-page=access]", { timeout: 3000 });
  } catch {
    // Already signed out by a call in flight.
  }
  await page.waitForSelector("#signin:not([hidden])", { timeout: 10000 });
  seen.afterRevoke = await page.textContent("#signin-error");
  step("revoked session stopped");

  // --- A metrics-role credential: the overview only.
  await page.fill("#credential", cfg.metricsKey);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#stat-requests");
  seen.navMetrics = await page.$$eval("#nav a", (as) => as.filter((a) => !a.hidden).map((a) => a.textContent));
  // The Access page by its address: not for this credential.
  await page.evaluate(() => {
    location.hash = "#access";
  });
  await page.waitForFunction(() => document.querySelector("#page h1").textContent === "Not available");
  seen.metricsAccessPage = await page.textContent("#page h1");
  seen.metricsButtons = await page.$$eval("#page button", (bs) => bs.map((b) => b.textContent));
  const write = await page.evaluate(async (key) => {
    const r = await fetch("admin/keys", {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "x", role: "admin" }),
    });
    return r.status;
  }, cfg.metricsKey);
  seen.metricsWrite = write;
  step("metrics role");

  // What the page saw, then a reload: the credential is gone with it.
  seen.xssBeforeReload = await page.evaluate(() => (window.__xss === undefined ? "none" : "fired"));
  seen.cspBeforeReload = await page.evaluate(() => window.__cspViolations);
  await page.reload({ waitUntil: "networkidle" });
  await page.waitForSelector("#signin-form");
  seen.afterReloadSignedOut = await page.isHidden("#nav");
  step("reload forgets the credential");

  seen.xss = await page.evaluate(() => window.__xss === undefined ? "none" : "fired");
  seen.cspViolations = await page.evaluate(() => window.__cspViolations);
  console.log(JSON.stringify(seen));
} catch (e) {
  seen.failed = String(e && e.stack ? e.stack : e);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) {
      await pages[0].screenshot({ path: path.join(cfg.shots, "failure.png"), fullPage: true });
      seen.failureText = await pages[0].innerText("body");
    }
  } catch {}
  console.log(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  await browser.close();
}
