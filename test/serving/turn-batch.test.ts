/**
 * TurnBatch (src/serving/turn-batch.ts): the exploration route's requests of one event-loop turn are answered
 * together at the end of that turn; each request gets its own result, and a failing one fails alone.
 */
import { describe, expect, it } from "vitest";
import { TurnBatch } from "../../src/serving/turn-batch.js";

describe("TurnBatch", () => {
  it("runs the work queued in one turn together, after the turn's synchronous code and before the next turn's timers", async () => {
    const batch = new TurnBatch();
    const order: string[] = [];
    const results = [1, 2, 3].map((k) =>
      batch.run(() => {
        order.push(`work ${k}`);
        return k * 10;
      }),
    );
    order.push("turn goes on");
    const timer = new Promise<void>((resolve) => setTimeout(() => resolve(void order.push("next turn")), 0));
    expect(await Promise.all(results)).toEqual([10, 20, 30]);
    await timer;
    expect(order).toEqual(["turn goes on", "work 1", "work 2", "work 3", "next turn"]);
  });

  it("fails only the job that throws or whose promise rejects; the others of its turn answer", async () => {
    const batch = new TurnBatch();
    const settled = await Promise.allSettled([
      batch.run(() => "a"),
      batch.run(() => {
        throw new Error("bad request");
      }),
      batch.run(() => Promise.reject(new Error("bad later"))),
      batch.run(() => Promise.resolve("d")),
    ]);
    expect(settled.map((s) => (s.status === "fulfilled" ? s.value : (s.reason as Error).message))).toEqual(["a", "bad request", "bad later", "d"]);
  });

  it("starts a new batch for work queued by a later turn (or by the batch's own work)", async () => {
    const batch = new TurnBatch();
    const first = await batch.run(() => batch.run(() => "queued from inside a batch"));
    expect(first).toBe("queued from inside a batch");
    expect(await batch.run(() => "a later turn")).toBe("a later turn");
  });
});
