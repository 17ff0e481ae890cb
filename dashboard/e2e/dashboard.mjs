// Drives the dashboard in headless Chromium and reports what a person would see.
//
// Started by tests/test_dashboard.py, which owns the server and makes the
// assertions. This script only looks: it loads the page, answers the admin
// token form if the page shows it, takes screenshots, and prints one JSON
// line per report on stdout. After the first report it reads commands from
// stdin, one per line:
//
//   refresh   click "Refresh" and report once the refresh has landed
//   next      report once a refresh started after this command has landed
//             (the page's own timer, see ?refresh=SECONDS)
//   period P  click the period button P (week, month...) and report
//   days N    pick N days of history and report
//   stale     wait for the "cannot reach the gateway" banner, then report
//   quit      close the browser and exit
//
// Environment: DASHBOARD_URL (required), ADMIN_TOKEN, ARTIFACTS_DIR
// (default test-artifacts), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOTS=0 to skip the screenshots and narrow layouts after loading, and
// CLOCK_START (an ISO time) to start the page's clock there, so that a
// gateway running on a test clock and the page agree on what "today" is.
// The page is shown with reduced motion (no chart animations) unless MOTION=1.

import { mkdir } from "node:fs/promises";
import path from "node:path";
import readline from "node:readline";

import { chromium } from "playwright-core";

const url = process.env.DASHBOARD_URL;
if (!url) {
  console.error("DASHBOARD_URL is not set");
  process.exit(2);
}
const adminToken = process.env.ADMIN_TOKEN ?? "";
const artifacts = process.env.ARTIFACTS_DIR ?? "test-artifacts";
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const screenshots = process.env.SCREENSHOTS !== "0";
const clockStart = process.env.CLOCK_START ?? "";
const motion = process.env.MOTION === "1";
const WAIT_MS = 20_000;

function emit(event, data) {
  process.stdout.write(`${JSON.stringify({ event, ...data })}\n`);
}

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

try {
  await run();
} catch (error) {
  emit("error", { message: String(error?.stack ?? error) });
  process.exitCode = 1;
} finally {
  await browser.close();
}

async function run() {
  await mkdir(artifacts, { recursive: true });
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    colorScheme: "light",
    reducedMotion: motion ? "no-preference" : "reduce",
  });
  if (clockStart) {
    // Time flows from there at its natural pace; timers fire as usual.
    await context.clock.install({ time: new Date(clockStart) });
  }
  const page = await context.newPage();

  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    // Chromium logs every non-2xx answer; the 401 before the token is expected.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      pageErrors.push(message.text());
    }
  });
  const apiAuthorization = [];
  const apiRequests = [];
  page.on("request", (request) => {
    const requested = new URL(request.url());
    if (requested.pathname.startsWith("/api/")) {
      apiAuthorization.push(request.headers()["authorization"] ?? null);
      apiRequests.push(`${requested.pathname}${requested.search}`);
    }
  });

  await page.goto(url);
  const askedForToken = await answerTokenForm(page);
  await page.waitForFunction(() => Number(document.body.dataset.refreshes ?? 0) > 0, null, {
    timeout: WAIT_MS,
  });
  await waitForCharts(page);

  const wide = await inspect(page);
  const layouts = screenshots
    ? await shootLayouts(page)
    : { narrow: null, narrowest: null, widest: null };

  emit("loaded", {
    askedForToken,
    wide,
    ...layouts,
    pageErrors: [...pageErrors],
    apiAuthorization: [...apiAuthorization],
  });

  const commands = readline.createInterface({ input: process.stdin });
  for await (const line of commands) {
    const command = line.trim();
    const [name, argument] = command.split(/\s+/);
    if (name === "refresh") {
      await afterRefresh(page, () => page.click("#refresh-now"));
      emit("refreshed", { report: await inspect(page), pageErrors: [...pageErrors] });
    } else if (name === "next") {
      // The first refresh to land may have started before this command; the
      // second started after the first landed.
      const before = await refreshCount(page);
      await page.waitForFunction(
        (count) => Number(document.body.dataset.refreshes ?? 0) >= count + 2,
        before,
        { timeout: WAIT_MS },
      );
      await settle(page);
      emit("next", { report: await inspect(page) });
    } else if (name === "period") {
      apiRequests.length = 0;
      await afterRefresh(page, () => page.click(`[data-period="${argument}"]`));
      emit("period", { report: await inspect(page), apiRequests: [...apiRequests] });
    } else if (name === "days") {
      apiRequests.length = 0;
      await afterRefresh(page, () => page.selectOption("#history-days", argument));
      emit("days", { report: await inspect(page), apiRequests: [...apiRequests] });
    } else if (name === "stale") {
      await page.waitForSelector("#banner:not([hidden])", { timeout: WAIT_MS });
      await settle(page);
      await shoot(page, "dashboard-1280-unreachable.png");
      await page.setViewportSize({ width: 375, height: 812 });
      await settle(page);
      await shoot(page, "dashboard-375-unreachable.png");
      await page.setViewportSize({ width: 1280, height: 900 });
      emit("stale", { report: await inspect(page) });
    } else if (name === "quit") {
      break;
    } else if (command) {
      emit("error", { message: `unknown command ${command}` });
    }
  }
  commands.close();
  await context.close();
}

/** Screenshots in both schemes from 1920 px down, and reports at 375, 360 and 1920 px. */
async function shootLayouts(page) {
  await shoot(page, "dashboard-1280.png");
  await page.emulateMedia({ colorScheme: "dark" });
  await settle(page);
  await shoot(page, "dashboard-1280-dark.png");

  await page.setViewportSize({ width: 375, height: 812 });
  await settle(page);
  await shoot(page, "dashboard-375-dark.png");
  await page.emulateMedia({ colorScheme: "light" });
  await settle(page);
  await shoot(page, "dashboard-375.png");
  const narrow = await inspect(page);
  await page.setViewportSize({ width: 360, height: 740 });
  await settle(page);
  const narrowest = await inspect(page);
  await page.setViewportSize({ width: 1920, height: 1080 });
  await settle(page);
  await shoot(page, "dashboard-1920.png");
  const widest = await inspect(page);

  await page.setViewportSize({ width: 1280, height: 900 });
  await settle(page);
  return { narrow, narrowest, widest };
}

async function answerTokenForm(page) {
  // Either the first refresh lands, or the page asks for the token.
  await page.waitForFunction(
    () =>
      Number(document.body.dataset.refreshes ?? 0) > 0 ||
      document.querySelector("#token-dialog")?.open === true,
    null,
    { timeout: WAIT_MS },
  );
  const asked = await page.evaluate(() => document.querySelector("#token-dialog")?.open === true);
  if (!asked) {
    return false;
  }
  if (!adminToken) {
    throw new Error("the page asked for an admin token and ADMIN_TOKEN is not set");
  }
  if (screenshots) {
    await shoot(page, "dashboard-token-form.png");
  }
  await page.fill("#token-input", adminToken);
  await afterRefresh(page, () => page.click("#token-form button[type=submit]"));
  return true;
}

/** Run *action*, then wait until the refresh it starts has landed. */
async function afterRefresh(page, action) {
  const before = await refreshCount(page);
  await action();
  await page.waitForFunction(
    (count) => Number(document.body.dataset.refreshes ?? 0) > count,
    before,
    { timeout: WAIT_MS },
  );
  await settle(page);
}

function refreshCount(page) {
  return page.evaluate(() => Number(document.body.dataset.refreshes ?? 0));
}

async function waitForCharts(page) {
  await page.waitForFunction(
    () => Array.from(document.querySelectorAll("canvas")).every((canvas) => canvas.width > 0),
    null,
    { timeout: WAIT_MS },
  );
  await settle(page);
}

// Two animation frames: enough for Chart.js to draw after a resize or a
// scheme change under reduced motion; with motion, also its 250 ms animations.
async function settle(page) {
  await page.evaluate(
    () =>
      new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => resolve()))),
  );
  await page.waitForTimeout(motion ? 600 : 150);
}

async function shoot(page, name) {
  await page.screenshot({ path: path.join(artifacts, name), fullPage: true });
}

/** Everything the tests check, read from the page as it is shown. */
function inspect(page) {
  return page.evaluate(() => {
    const text = (element) => (element?.textContent ?? "").trim();
    const visible = (element) => {
      if (!element || element.hidden) return false;
      const box = element.getBoundingClientRect();
      return box.width > 0 && box.height > 0 && getComputedStyle(element).display !== "none";
    };

    const kpis = {};
    for (const element of document.querySelectorAll("[data-kpi]")) {
      kpis[element.dataset.kpi] = {
        text: text(element),
        value: element.dataset.value === undefined ? null : element.dataset.value,
        opacity: Number(getComputedStyle(element.closest("main")).opacity),
      };
    }

    const budgets = {};
    for (const card of document.querySelectorAll("[data-budget]")) {
      const fill = card.querySelector(".bar-fill");
      budgets[card.dataset.budget] = {
        level: card.dataset.level ?? null,
        classes: card.className,
        fillColour: getComputedStyle(fill).backgroundColor,
        fillWidth: fill.getBoundingClientRect().width,
        trackWidth: card.querySelector(".bar").getBoundingClientRect().width,
        state: text(card.querySelector(".budget-state")),
        text: text(card.querySelector(".budget-text")),
      };
    }

    // A canvas counts as drawn when enough of its pixels are not transparent.
    const charts = {};
    for (const canvas of document.querySelectorAll("canvas")) {
      const context = canvas.getContext("2d");
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      let painted = 0;
      for (let index = 3; index < data.length; index += 4) {
        if (data[index] > 0) painted += 1;
      }
      charts[canvas.id] = { width: canvas.width, height: canvas.height, painted };
    }

    const tables = {};
    // Whether each table fits its card without scrolling sideways.
    const tableFits = {};
    for (const table of document.querySelectorAll("table")) {
      tables[table.id] = Array.from(table.tBodies[0].rows).map((row) =>
        Array.from(row.cells).map((cell) => text(cell)),
      );
      const wrap = table.parentElement;
      tableFits[table.id] = wrap.scrollWidth <= wrap.clientWidth;
    }

    const banner = document.querySelector("#banner");
    return {
      kpis,
      budgets,
      charts,
      tables,
      tableFits,
      bannerVisible: visible(banner),
      bannerText: text(banner),
      bodyStale: document.body.classList.contains("is-stale"),
      staleSections: Array.from(
        new Set(
          Array.from(document.querySelectorAll("[data-stale]")).map((item) => item.dataset.section),
        ),
      ),
      lastRefresh: text(document.querySelector("#last-refresh")),
      periodRange: text(document.querySelector("#period-range")),
      fragment: location.hash,
      viewportWidth: window.innerWidth,
      scrollWidth: document.documentElement.scrollWidth,
    };
  });
}
