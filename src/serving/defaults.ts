/**
 * The serving layer's defaults, written once: the server, its routes, the user index, the grounding index and the
 * experiment simulation fall back to them, and the config schema (src/cli/config.ts, sections `serve` and
 * `experiment`) takes its defaults from here.
 */
import { DAY_MS } from "../domain/clock.js";

/** Defaults of ServeOptions (config section `serve`). */
export const SERVE_DEFAULTS = {
  host: "127.0.0.1",
  port: 8080,
  bodyLimitBytes: 1_048_576,
  maxBatchEvents: 10_000,
  /** Why one day: DEFAULT_FUTURE_TOLERANCE_MS, src/serving/intake.ts. */
  futureToleranceMs: DAY_MS,
  unknownItems: "reject",
  reloadIntervalMs: 1000,
  defaultN: 10,
  maxN: 50,
  itemsPerCluster: 3,
  logLevel: "info",
  groundingWindowDays: 30,
  groundingRebuildMinutes: 60,
  covisitationSpan: 5,
  recentItems: 10,
} as const;

/** Defaults of the experiment options (config section `experiment`). */
export const EXPERIMENT_DEFAULTS = {
  attributionHours: 24,
  slateSize: 3,
  days: 14,
  refreshDays: 2,
  resamples: 1000,
  flushIntervalMs: 1000,
} as const;
