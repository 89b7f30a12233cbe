/**
 * Renders job progress: a cli-progress bar on a TTY, a line every few seconds otherwise (CI logs, pipes).
 * Always on stderr, so `--json` output on stdout stays one clean object.
 */
import cliProgress from "cli-progress";
import type { ProgressSink } from "../domain/types.js";

/** Seconds between progress lines when stderr is not a terminal. */
const LINE_INTERVAL_MS = 5_000;

export function progressSink(): ProgressSink {
  return process.stderr.isTTY ? new BarProgress() : new LineProgress();
}

class BarProgress implements ProgressSink {
  private bar: cliProgress.SingleBar | null = null;
  start(label: string, total: number): void {
    this.stop();
    this.bar = new cliProgress.SingleBar(
      { format: `${label} [{bar}] {percentage}% {value}/{total} {detail}`, stream: process.stderr, hideCursor: true, clearOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, 0, { detail: "" });
  }
  update(done: number, detail?: Record<string, string | number>): void {
    this.bar?.update(done, { detail: formatDetail(detail) });
  }
  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

class LineProgress implements ProgressSink {
  private label = "";
  private total = 0;
  private last = 0;
  private done = 0;
  start(label: string, total: number): void {
    this.label = label;
    this.total = total;
    this.last = 0;
    process.stderr.write(`${label}: started (${total} steps)\n`);
  }
  update(done: number, detail?: Record<string, string | number>): void {
    this.done = done;
    // Wall time only paces log lines; it never feeds a result.
    const now = performance.now();
    if (now - this.last < LINE_INTERVAL_MS && done < this.total) return;
    this.last = now;
    const pct = this.total ? ((100 * done) / this.total).toFixed(0) : "?";
    process.stderr.write(`${this.label}: ${done}/${this.total} (${pct}%) ${formatDetail(detail)}\n`);
  }
  stop(): void {
    if (this.label) process.stderr.write(`${this.label}: done (${this.done})\n`);
    this.label = "";
  }
}

function formatDetail(detail?: Record<string, string | number>): string {
  if (!detail) return "";
  return Object.entries(detail)
    .map(([k, v]) => `${k}=${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v}`)
    .join(" ");
}
