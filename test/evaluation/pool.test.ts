/**
 * The replay pool's order: fine-tuning strategies first, strategies waiting for their start model
 * left for later while ready ones run, no new start after a failure. Driven step by step with hand-released
 * promises: each strategy's run ends when the test says so.
 */
import { describe, expect, it } from "vitest";
import { runPool, type StrategySetup } from "../../src/evaluation/replay.js";

function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

const setup = (name: string, extra: Partial<StrategySetup> = {}): StrategySetup => ({
  name,
  create: () => Promise.reject(new Error("not used")),
  ...extra,
});

/** Lets every pending promise callback run. */
const settle = () => new Promise((r) => setImmediate(r));

describe("replay pool", () => {
  it("runs fine-tuning strategies first, and ready strategies while others wait for their model", async () => {
    const startModel = deferred();
    const setups = [
      setup("static", { ready: startModel.promise }),
      setup("finetune-monthly", { ready: startModel.promise, finetunes: true }),
      setup("hybrid", { ready: startModel.promise, finetunes: true }),
      setup("successor-top1"),
      setup("popular-novel"),
    ];
    const log: string[] = [];
    const ends = new Map(setups.map((s) => [s.name, deferred()]));
    const pool = runPool(setups, 2, async (s) => {
      log.push(`start ${s.name}`);
      await ends.get(s.name)!.promise;
      log.push(`end ${s.name}`);
    });
    await settle();
    // The start model is training: only the baselines can run.
    expect(log).toEqual(["start successor-top1", "start popular-novel"]);
    ends.get("successor-top1")!.resolve();
    ends.get("popular-novel")!.resolve();
    await settle();
    expect(log.slice(2)).toEqual(["end successor-top1", "end popular-novel"]);
    startModel.resolve();
    await settle();
    // Fine-tuning strategies first (the longest chain), static when a slot frees.
    expect(log.slice(4)).toEqual(["start finetune-monthly", "start hybrid"]);
    ends.get("hybrid")!.resolve();
    await settle();
    expect(log.slice(6)).toEqual(["end hybrid", "start static"]);
    ends.get("static")!.resolve();
    ends.get("finetune-monthly")!.resolve();
    await pool;
    expect(log.slice(8)).toEqual(["end static", "end finetune-monthly"]);
  });

  it("starts nothing new after a failure, lets the running strategy finish, and throws the failure", async () => {
    const log: string[] = [];
    const slow = deferred();
    const pool = runPool([setup("a"), setup("b"), setup("c"), setup("d")], 2, async (s) => {
      log.push(`start ${s.name}`);
      if (s.name === "a") await slow.promise;
      if (s.name === "b") throw new Error("b failed");
      log.push(`end ${s.name}`);
    });
    const outcome = pool.then(
      () => null,
      (e: Error) => e.message,
    );
    await settle();
    slow.resolve();
    expect(await outcome).toBe("b failed");
    expect(log).toEqual(["start a", "start b", "end a"]);
  });

  it("wakes a slot waiting for a start model when another strategy fails, and stops", async () => {
    const never = new Promise<void>(() => {});
    const ran: string[] = [];
    const pool = runPool([setup("successor-top1"), setup("static", { ready: never })], 2, async (s) => {
      ran.push(s.name);
      await settle();
      throw new Error(`${s.name} failed`);
    });
    await expect(pool).rejects.toThrow("successor-top1 failed");
    expect(ran).toEqual(["successor-top1"]);
  });

  it("starts a strategy whose readiness failed, so its own create() reports the cause", async () => {
    const failedModel = deferred();
    const ran: string[] = [];
    const pool = runPool([setup("static", { ready: failedModel.promise })], 2, async (s) => {
      ran.push(s.name);
    });
    failedModel.reject(new Error("start model failed"));
    await pool;
    expect(ran).toEqual(["static"]);
  });
});
