// Drives Debian's headless Chromium (through playwright-core, from npm)
// through Warden's /docs page, as a user's browser would load it:
//
//   node docs_page.mjs <base-url> <screenshot.png>
//
// Prints one JSON line: operations rendered, operations in the document,
// requests that left the server's origin, console errors (Chromium reports
// Content-Security-Policy violations there) and CSP violation events. The
// e2e test asserts on them. The server's certificate is the test's
// self-signed one, hence ignoreHTTPSErrors.
import { createRequire } from "node:module";
import path from "node:path";

const [base, screenshot] = process.argv.slice(2);
const require = createRequire(path.join(process.env.WARDEN_NODE_MODULES, "x.js"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
  });
  // Recorded before any page script runs, in every frame.
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  const page = await context.newPage();
  const origin = new URL(base).origin;
  const offOrigin = [];
  const consoleErrors = [];
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && new URL(u).origin !== origin) offOrigin.push(u);
  });
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("response", (r) => {
    if (r.status() >= 400) consoleErrors.push(`${r.status()} ${r.url()}`);
  });

  const response = await page.goto(`${base}/docs`, { waitUntil: "networkidle" });
  await page.waitForSelector(".opblock", { timeout: 20000 });
  const doc = await (await page.request.get(`${base}/openapi.json`)).json();
  const methods = ["get", "put", "post", "delete", "patch", "head", "options"];
  const documented = Object.values(doc.paths).reduce(
    (n, item) => n + methods.filter((m) => m in item).length,
    0,
  );
  const rendered = await page.locator(".opblock").count();
  const title = await page.locator(".info .title").first().innerText();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(
    JSON.stringify({
      status: response.status(),
      csp: response.headers()["content-security-policy"],
      title,
      rendered,
      documented,
      offOrigin,
      consoleErrors,
      cspViolations: await page.evaluate(() => window.__cspViolations),
    }),
  );
} finally {
  await browser.close();
}
