// Open a player page in headless Chromium, let it play, print what the page saw as JSON.
// usage: node play.mjs PAGE_URL SECONDS
import { chromium } from "playwright-core";

const [pageUrl, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
});
try {
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (msg) => { if (msg.type() === "error") console_.push(msg.text()); });
  await page.goto(pageUrl);
  const samples = [];
  const deadline = Date.now() + Number(seconds) * 1000;
  while (Date.now() < deadline) {
    await page.waitForTimeout(500);
    samples.push(await page.evaluate(() => {
      const v = document.getElementById("v");
      const q = v.getVideoPlaybackQuality();
      return {t: v.currentTime, frames: q.totalVideoFrames, dropped: q.droppedVideoFrames,
              readyState: v.readyState};
    }));
  }
  const report = await page.evaluate(() => window.report);
  console.log(JSON.stringify({...report, samples, console: console_}));
} finally {
  await browser.close();
}
