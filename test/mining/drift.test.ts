import { describe, expect, it } from "vitest";
import { driftFromMonthlyCounts } from "../../src/mining/drift.js";
import type { TransitionCount } from "../../src/domain/types.js";
import { writeDriftReport } from "../../src/evaluation/drift-report.js";
import { readFileSync } from "node:fs";
import { tempDir } from "../temp-dir.js";

/** Counts for pair (a,b) whose successors get `users` each. */
const month = (pairs: Record<string, Record<string, number>>): TransitionCount[] =>
  Object.entries(pairs).flatMap(([pair, successors]) =>
    Object.entries(successors).map(([next, users]) => ({ c1: pair[0], c2: pair[1], next, users })),
  );

describe("drift analysis", () => {
  it("compares top-k successor sets of consecutive months with Jaccard", () => {
    const byMonth = new Map([
      ["2025-01", month({ ab: { c: 5, d: 4, e: 1 }, xy: { z: 9 } })],
      ["2025-02", month({ ab: { c: 6, e: 5, d: 1 }, xy: { z: 2, w: 8 } })],
      ["2025-03", month({ ab: { f: 9, g: 9 } })],
    ]);
    const drift = driftFromMonthlyCounts(byMonth, { topK: 2, minSupport: 1 });
    // Feb vs Jan: ab {c,d} vs {c,e} = 1/3; xy {z} vs {w,z} = 1/2. Mar vs Feb: ab {c,e} vs {f,g} = 0.
    expect(drift.months).toEqual([
      { month: "2025-02", meanJaccard: expect.closeTo((1 / 3 + 1 / 2) / 2, 10), pairs: 2 },
      { month: "2025-03", meanJaccard: 0, pairs: 1 },
    ]);
    const values = [1 / 3, 1 / 2, 0];
    const mean = values.reduce((s, v) => s + v) / 3;
    expect(drift.meanJaccard).toBeCloseTo(mean, 10);
    expect(drift.varianceJaccard).toBeCloseTo(values.reduce((s, v) => s + (v - mean) ** 2, 0) / 3, 10);
    expect(drift.pairsCompared).toBe(3);
  });

  it("skips pairs below the support minimum and non-consecutive months", () => {
    const byMonth = new Map([
      ["2025-01", month({ ab: { c: 5 }, xy: { z: 1 } })],
      ["2025-02", month({ ab: { c: 5 }, xy: { z: 1 } })],
      ["2025-04", month({ ab: { c: 5 } })],
    ]);
    const drift = driftFromMonthlyCounts(byMonth, { topK: 5, minSupport: 2 });
    expect(drift.months).toEqual([{ month: "2025-02", meanJaccard: 1, pairs: 1 }]);
  });

  it("writes a well-formed self-contained HTML report with an SVG chart", () => {
    const drift = driftFromMonthlyCounts(
      new Map([
        ["2025-01", month({ ab: { c: 5, d: 2 } })],
        ["2025-02", month({ ab: { c: 5, e: 2 } })],
        ["2025-03", month({ ab: { d: 5, e: 2 } })],
      ]),
      { topK: 2, minSupport: 1 },
    );
    const paths = writeDriftReport(tempDir("freshrec-report-"), drift, "test <data>");
    const html = readFileSync(paths.html, "utf8");
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html).toContain("<svg");
    expect(html).toContain("polyline");
    expect(html).toContain("test &lt;data&gt;");
    expect(html).not.toMatch(/<script|https?:\/\/(?!www\.w3\.org)/);
    // Every opened element is closed (void elements aside).
    const stack: string[] = [];
    for (const [, close, name, selfClosing] of html.matchAll(/<(\/?)([a-zA-Z][\w-]*)[^>]*?(\/?)>/g)) {
      if (["meta", "br", "!DOCTYPE"].includes(name) || selfClosing) continue;
      if (close) expect(stack.pop()).toBe(name);
      else stack.push(name);
    }
    expect(stack).toEqual([]);
    expect(JSON.parse(readFileSync(paths.json, "utf8")).meanJaccard).toBeCloseTo(drift.meanJaccard);
    expect(readFileSync(paths.md, "utf8")).toContain("| 2025-02 |");
  });
});
