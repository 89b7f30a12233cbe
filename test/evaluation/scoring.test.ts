import { describe, expect, it } from "vitest";
import { liveAt, scoreTransitions, type LiveTableEntry } from "../../src/evaluation/scoring.js";

const DAY = 86_400_000;
const table = (version: string, publishedAt: number, rows: Record<string, string[]>): LiveTableEntry => ({
  version,
  publishedAt,
  answers: (c1, c2) => rows[`${c1}${c2}`] ?? [],
});

describe("replay scoring", () => {
  const t1 = table("t1", 10 * DAY, { ab: ["c", "d"], xy: ["z"] });
  const t2 = table("t2", 12 * DAY, { ab: ["d", "c"] });
  const tr = (userId: string, day: number, c1: string, c2: string, next: string, horizon = [next]) => ({ userId, ts: day * DAY, c1, c2, next, horizon });

  it("scores each transition against the table live at its moment", () => {
    const transitions = [
      tr("u1", 9, "a", "b", "c"), // before any table: miss, unserved
      tr("u1", 10, "a", "b", "c"), // t1 exactly at its publish time: hit@1
      tr("u2", 11.5, "a", "b", "d"), // t1: d is second -> hit@5 only
      tr("u2", 12, "a", "b", "d"), // t2 live: hit@1
      tr("u3", 13, "x", "y", "z"), // t2 has no row for (x,y): miss
      tr("u3", 13.5, "a", "b", "e", ["e", "d"]), // t2 top-1 d appears in the horizon
    ];
    const s = scoreTransitions(transitions, [t2, t1]);
    expect(s.transitions).toBe(6);
    expect(s.unserved).toBe(1);
    expect(s.hit1).toBeCloseTo(2 / 6);
    expect(s.hitK).toBeCloseTo(3 / 6);
    expect(s.horizonHit).toBeCloseTo(3 / 6);
    expect(s.coverage).toBe(2);
    expect(s.perUser.get("u2")).toEqual({ transitions: 2, hit1: 1, hitK: 2, horizonHit: 1 });
  });

  it("finds the live table by binary search", () => {
    const tables = [0, 5, 10].map((p) => ({ publishedAt: p }));
    expect(liveAt(tables, -1)).toBeNull();
    expect(liveAt(tables, 5)).toBe(tables[1]);
    expect(liveAt(tables, 9.9)).toBe(tables[1]);
    expect(liveAt(tables, 100)).toBe(tables[2]);
  });
});
