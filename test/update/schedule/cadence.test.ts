import { describe, expect, it } from "vitest";
import { DAY_MS } from "../../../src/domain/clock.js";
import {
  CadenceError,
  DEFAULT_FINETUNE_CADENCE,
  DEFAULT_REFRESH_CADENCE,
  parseCadence,
} from "../../../src/update/schedule/index.js";

const t = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString().slice(0, 10);

describe("cadence", () => {
  it("monthly on day 1 (the fine-tuning default) falls on the first of each month, 00:00 UTC", () => {
    const monthly = parseCadence(DEFAULT_FINETUNE_CADENCE);
    const { times, older } = monthly.dueBetween(t("2025-01-01") - 1, t("2025-04-01") - 1);
    expect(times.map(iso)).toEqual(["2025-01-01", "2025-02-01", "2025-03-01"]);
    expect(older).toBe(0);
    expect(monthly.next(t("2025-01-15T10:00:00Z"))).toBe(t("2025-02-01T00:00:00Z"));
    expect(monthly.next(t("2025-02-01T00:00:00Z"))).toBe(t("2025-03-01T00:00:00Z"));
  });

  it("an anchored interval counts from its anchor", () => {
    const every2 = parseCadence("every 2 days from 2025-01-01");
    const { times } = every2.dueBetween(t("2025-01-01") - 1, t("2025-04-01") - 1);
    expect(times).toHaveLength(45); // 90 days in January-March 2025
    expect(times.slice(0, 3).map(iso)).toEqual(["2025-01-01", "2025-01-03", "2025-01-05"]);
    expect(iso(times[44])).toBe("2025-03-30"); // day 88 after January 1
  });

  it("an interval without anchor counts from the Unix epoch, so the due days never depend on the start", () => {
    const every2 = parseCadence(DEFAULT_REFRESH_CADENCE);
    expect(iso(every2.next(t("2025-01-01") - 1)!)).toBe("2025-01-02");
    expect(parseCadence("every day").next(t("2025-01-01T05:00:00Z"))).toBe(t("2025-01-02"));
    expect(parseCadence("every 6 hours").next(t("2025-01-01T05:00:00Z"))).toBe(t("2025-01-01T06:00:00Z"));
  });

  it("due times are (after, until]: the cursor itself is not due again", () => {
    const daily = parseCadence("every 1 day");
    expect(daily.dueBetween(t("2025-01-01"), t("2025-01-03")).times.map(iso)).toEqual(["2025-01-02", "2025-01-03"]);
    expect(daily.dueBetween(t("2025-01-03"), t("2025-01-03")).times).toEqual([]);
  });

  it("a limit keeps the newest due times and counts the older ones", () => {
    for (const text of ["every 1 day", "0 0 * * *"]) {
      const { times, older } = parseCadence(text).dueBetween(t("2025-01-01"), t("2025-01-11"), 2);
      expect(times.map(iso), text).toEqual(["2025-01-10", "2025-01-11"]);
      expect(older, text).toBe(8);
    }
    expect(parseCadence("every 1 day").dueBetween(0, 400 * DAY_MS, 1).older).toBe(399);
  });

  it("rejects what it cannot read, naming the cadence", () => {
    for (const bad of ["", "every 0 days", "every 2 weeks", "every 2 days from yesterday", "0 0 1 *", "61 * * * *"]) {
      let caught: unknown;
      try {
        parseCadence(bad);
      } catch (error) {
        caught = error;
      }
      expect(caught, bad).toBeInstanceOf(CadenceError);
      expect((caught as CadenceError).code).toBe("BAD_INPUT");
      expect((caught as CadenceError).message).toContain(`"${bad}"`);
    }
  });
});
