/**
 * Cadences: when a job falls due. Two forms, both in UTC so a schedule means the same on every machine:
 * - a cron pattern (5 fields, or 6 with seconds; croner syntax and nicknames such as "@monthly"), e.g. the
 *   fine-tuning default "0 0 1 * *" (00:00 UTC on day 1 of every month);
 * - an interval, "every N days|hours|minutes" (singular allowed, N defaults to 1), optionally anchored with
 *   "from <ISO time>", e.g. the refresh default "every 2 days". Without an anchor the interval counts from the Unix
 *   epoch (as Temporal's interval specs do), so the due days do not depend on when the scheduler happened to start:
 *   "every 2 days" falls on 2025-01-02, 2025-01-04, ...; "every 2 days from 2025-01-01" on 2025-01-01, 2025-01-03, ...
 *
 * Cadences are pure: they compute due times from a given instant and never read the clock or arm timers.
 *
 * @example
 * const monthly = parseCadence("0 0 1 * *");
 * monthly.next(Date.parse("2025-01-15T00:00:00Z")); // 2025-02-01T00:00:00Z
 * parseCadence("every 2 days from 2025-01-01").dueBetween(from, to); // [from, from + 2 days, ...]
 */
import { Cron } from "croner";
import { DAY_MS, parseTime } from "../../domain/clock.js";
import { CadenceError } from "./errors.js";

/** The fine-tuning default: 00:00 UTC on the first day of each month (the paper's monthly cadence). */
export const DEFAULT_FINETUNE_CADENCE = "0 0 1 * *";
/** The refresh default: every 2 days (the paper's sub-weekly RAG cadence). */
export const DEFAULT_REFRESH_CADENCE = "every 2 days";

export interface Cadence {
  /** The text it was parsed from, kept for status output and the run log. */
  readonly text: string;
  /** The first due time strictly after `after` (epoch ms), or null when the cadence never falls due again. */
  next(after: number): number | null;
  /**
   * Due times in the half-open window (after, until], oldest first. Used for catch-up, where `after` is the last
   * due time the scheduler handled; at most `limit` times are returned, the newest ones, with the count of older
   * times left out, so a long outage of a fine-grained cadence stays cheap to account for.
   */
  dueBetween(after: number, until: number, limit?: number): { readonly times: number[]; readonly older: number };
}

const UNIT_MS: Record<string, number> = { minute: 60_000, hour: 3_600_000, day: DAY_MS };
const INTERVAL = /^every(?:\s+(\d+))?\s+(minute|hour|day)s?(?:\s+from\s+(\S+))?$/i;

export function parseCadence(text: string): Cadence {
  const trimmed = text.trim();
  if (trimmed === "") throw new CadenceError(text, "empty; use a cron pattern or \"every N days\"");
  if (/^every\b/i.test(trimmed)) return parseInterval(text, trimmed);
  return parseCron(text, trimmed);
}

function parseInterval(text: string, trimmed: string): Cadence {
  const match = INTERVAL.exec(trimmed);
  if (!match) {
    throw new CadenceError(text, 'expected "every N days|hours|minutes [from ISO-TIME]", e.g. "every 2 days"');
  }
  const count = match[1] === undefined ? 1 : Number(match[1]);
  if (!Number.isSafeInteger(count) || count < 1) throw new CadenceError(text, "the interval must be at least 1");
  const period = count * UNIT_MS[match[2].toLowerCase()];
  const anchor = match[3] === undefined ? 0 : parseTime(match[3]);
  if (Number.isNaN(anchor)) throw new CadenceError(text, `"${match[3]}" is no time (use ISO-8601, e.g. 2025-01-01)`);
  // Index of the last due time at or before t; due times are anchor + k * period for every integer k.
  const indexAtOrBefore = (t: number): number => Math.floor((t - anchor) / period);
  return {
    text: trimmed,
    next: (after) => anchor + (indexAtOrBefore(after) + 1) * period,
    dueBetween(after, until, limit = Number.POSITIVE_INFINITY) {
      if (until <= after) return { times: [], older: 0 };
      const first = indexAtOrBefore(after) + 1;
      const last = indexAtOrBefore(until);
      const total = Math.max(0, last - first + 1);
      const kept = Math.min(total, limit);
      const times: number[] = [];
      for (let k = last - kept + 1; k <= last; k++) times.push(anchor + k * period);
      return { times, older: total - kept };
    },
  };
}

function parseCron(text: string, trimmed: string): Cadence {
  let cron: Cron;
  try {
    // paused and without a callback: croner only computes times here, it never arms a timer.
    cron = new Cron(trimmed, { paused: true, timezone: "UTC", mode: "5-or-6-parts" });
  } catch (error) {
    throw new CadenceError(text, error instanceof Error ? error.message : String(error), { cause: error });
  }
  const next = (after: number): number | null => {
    const date = cron.nextRun(new Date(after));
    return date === null ? null : date.getTime();
  };
  return {
    text: trimmed,
    next,
    dueBetween(after, until, limit = Number.POSITIVE_INFINITY) {
      // Cron occurrences have no closed form: walk forward, keeping only the newest `limit` times.
      const times: number[] = [];
      let older = 0;
      for (let t = next(after); t !== null && t <= until; t = next(t)) {
        times.push(t);
        if (times.length > limit) {
          times.shift();
          older++;
        }
      }
      return { times, older };
    },
  };
}
