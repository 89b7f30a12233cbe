/**
 * EventLists (src/serving/event-lists.ts) against plain arrays: many lists growing and shrinking at random on small
 * pages, so that lists move to larger regions over and over, reuse the regions others left, fill pages, and outgrow
 * a page; every list still holds its own events in order, and the room the pages hold stays within a bound of what
 * the lists hold (regions are reused).
 */
import { describe, expect, it } from "vitest";
import { EventLists } from "../../src/serving/event-lists.js";
import { seededRandom } from "../../src/domain/random.js";

describe("EventLists", () => {
  it("keeps each list's events through moves, reused regions and full pages, as arrays would", () => {
    const next = seededRandom(5);
    // Small pages: pages fill often, and the largest lists get pages of their own.
    const lists = new EventLists(64);
    const model: { items: number[]; times: number[] }[] = [];
    for (let step = 0; step < 20_000; step++) {
      const roll = next();
      if (roll < 0.02 || model.length === 0) {
        const room = Math.floor(next() * 3);
        expect(lists.add(room)).toBe(model.length);
        model.push({ items: [], times: [] });
      } else {
        const u = Math.floor(next() * model.length);
        const m = model[u];
        if (roll < 0.85 || m.items.length === 0) {
          const at = Math.floor(next() * (m.items.length + 1));
          const item = Math.floor(next() * 1000);
          const ts = 1.7e12 + Math.floor(next() * 1e9);
          lists.insert(u, at, item, ts);
          m.items.splice(at, 0, item);
          m.times.splice(at, 0, ts);
        } else if (roll < 0.97) {
          const at = Math.floor(next() * m.items.length);
          lists.remove(u, at);
          m.items.splice(at, 1);
          m.times.splice(at, 1);
        } else {
          const rows = Array.from({ length: Math.floor(next() * 90) }, (_, k) => k);
          const items = rows.map(() => Math.floor(next() * 1000));
          const times = rows.map(() => 1.7e12 + Math.floor(next() * 1e9));
          lists.assign(u, items, times, rows);
          model[u] = { items, times };
        }
      }
      if (step % 500 === 0) for (let u = 0; u < model.length; u++) expect(lists.copy(u)).toEqual(model[u]);
    }
    expect(lists.count).toBe(model.length);
    for (let u = 0; u < model.length; u++) {
      expect(lists.copy(u)).toEqual(model[u]);
      expect(lists.length(u)).toBe(model[u].items.length);
      for (let k = 0; k < model[u].items.length; k++) expect([lists.item(u, k), lists.time(u, k)]).toEqual([model[u].items[k], model[u].times[k]]);
    }
    const held = model.reduce((sum, m) => sum + m.items.length, 0);
    // Regions are at most about a third unused and the left ones are reused: well under three times what is held.
    expect(lists.entries).toBeLessThan(3 * held + 64 * 4);
  });
});
