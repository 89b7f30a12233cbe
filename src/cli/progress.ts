/**
 * Renders job progress: a cli-progress bar on a TTY, a line every few seconds otherwise (CI logs, pipes).
 * Always on stderr, so `--json` output on stdout stays one clean object.
 */
import type { TrainingEvent } from "../llm/contracts.js";
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
  private printedTotal = false;
  start(label: string, total: number): void {
    this.label = label;
    this.printedTotal = false;
    this.total = total;
    this.last = 0;
    this.done = 0;
    // No unit here: a total may count events, prompts or (training) percent of an epoch; the update lines show it.
    process.stderr.write(`${label}: started\n`);
  }
  update(done: number, detail?: Record<string, string | number>): void {
    this.done = done;
    // Wall time only paces log lines; it never feeds a result.
    const now = performance.now();
    // Throttled, except that reaching the total is printed once.
    if (done >= this.total ? this.printedTotal : now - this.last < LINE_INTERVAL_MS) return;
    if (done >= this.total) this.printedTotal = true;
    this.last = now;
    const pct = this.total ? ((100 * done) / this.total).toFixed(0) : "?";
    process.stderr.write(`${this.label}: ${done}/${this.total} (${pct}%) ${formatDetail(detail)}\n`);
  }
  stop(): void {
    if (this.label) process.stderr.write(`${this.label}: done (${this.done} of ${this.total})\n`);
    this.label = "";
  }
}

function formatDetail(detail?: Record<string, string | number>): string {
  if (!detail) return "";
  return Object.entries(detail)
    .map(([k, v]) => `${k}=${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v}`)
    .join(" ");
}

/**
 * Training progress on a sink: one bar (or periodic lines) per epoch with tokens/s, then one line per epoch with
 * train loss/accuracy and the validation answer loss/accuracy.
 */
export function trainingProgress(progress: ProgressSink, log: (line: string) => void, label = "training"): (event: TrainingEvent) => void {
  let epoch = 0;
  return (event) => {
    if (event.type === "step") {
      if (event.epoch !== epoch) {
        epoch = event.epoch;
        progress.start(`${label} epoch ${event.epoch}/${event.epochs}`, 100);
      }
      progress.update(Math.round(event.fraction * 100), { "tok/s": Math.round(event.tokensPerSecond) });
      return;
    }
    // The epoch is whole even when its last step event came before 100% (only if its bar was started).
    if (epoch !== 0) progress.update(100);
    progress.stop();
    epoch = 0;
    const val = event.validationLoss === null ? "" : ` validation loss ${event.validationLoss.toFixed(3)} top-1 ${(event.validationAccuracy ?? 0).toFixed(3)}`;
    log(`${label} epoch ${event.epoch}: train loss ${event.trainLoss.toFixed(3)} accuracy ${event.trainAccuracy.toFixed(3)}${val} (${Math.round(event.tokensPerSecond)} tok/s)`);
  };
}
