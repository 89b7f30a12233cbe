/**
 * Time is injected: nothing outside this module reads the wall clock. Jobs receive a Clock, replay and tests
 * hand them a VirtualClock, so an as-of time is always explicit and leakage can be tested.
 *
 * @example
 * const clock = new VirtualClock(Date.parse("2025-03-01T00:00:00Z"));
 * clock.advance(2 * DAY_MS);
 */
export interface Clock {
  /** Current time in epoch milliseconds. */
  now(): number;
}

export const DAY_MS = 86_400_000;

export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }
}

export class VirtualClock implements Clock {
  constructor(private current: number) {}
  now(): number {
    return this.current;
  }
  advance(ms: number): void {
    if (ms < 0) throw new RangeError("a virtual clock never goes back");
    this.current += ms;
  }
  set(ms: number): void {
    if (ms < this.current) throw new RangeError("a virtual clock never goes back");
    this.current = ms;
  }
}

/** Wall-clock seconds for measuring durations (monotonic, not a date). */
export function elapsedSeconds(startHr: bigint): number {
  return Number(process.hrtime.bigint() - startHr) / 1e9;
}

/**
 * Parses a user-given time: ISO-8601, or unix seconds / milliseconds (a bare number; values below 1e11 are
 * seconds). Returns NaN when the text is no time, including a date the calendar does not have (`calendarProblem`).
 */
export function parseTime(text: string): number {
  const t = text.trim();
  if (t === "") return Number.NaN;
  if (/^-?\d+(\.\d+)?$/.test(t)) {
    const n = Number(t);
    return Math.abs(n) < 1e11 ? Math.round(n * 1000) : Math.round(n);
  }
  // Date-only ISO strings are UTC in JS already; a date-time without zone would be local time, which makes
  // results depend on the machine: treat it as UTC.
  const withZone = /T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(t) ? `${t}Z` : t;
  if (!/^\d{4}-\d{2}-\d{2}/.test(withZone)) return Number.NaN;
  if (calendarProblem(t) !== null) return Number.NaN;
  return Date.parse(withZone);
}

const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

/**
 * Why the date an ISO-8601 text starts with is not in the calendar ("February 2025 has 28 days"), or null.
 * Date.parse rolls a day past the month's end over into the next month (2025-02-30 becomes March 2nd), so a
 * mistyped date would otherwise be taken as another day.
 */
export function calendarProblem(text: string): string | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(text.trim());
  if (!m) return null;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (month < 1 || month > 12) return `there is no month ${m[2]}`;
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  const days = month === 2 ? (leap ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31;
  if (day < 1 || day > days) return `${MONTHS[month - 1]} ${m[1]} has ${days} days`;
  return null;
}
