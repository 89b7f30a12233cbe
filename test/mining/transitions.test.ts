import { describe, expect, it } from "vitest";
import { EventStore } from "../../src/data/event-store.js";
import { PostgresEventStore } from "../../src/data/postgres-event-store.js";
import { jaccard, successorLists } from "../../src/mining/successors.js";
import { usePostgresCluster } from "../data/postgres-cluster.js";
import { miningConformance } from "./transitions-conformance.js";

miningConformance("duckdb", () => EventStore.open(":memory:"));

const database = usePostgresCluster();
miningConformance("postgres", async () => PostgresEventStore.open(await database()));

describe("successor lists", () => {
  it("ranks successors by users, breaks ties by id and applies the support minimum", () => {
    const lists = successorLists(
      [
        { c1: "a", c2: "b", next: "d", users: 3 },
        { c1: "a", c2: "b", next: "c", users: 3 },
        { c1: "a", c2: "b", next: "e", users: 5 },
        { c1: "b", c2: "a", next: "c", users: 1 },
      ],
      { topK: 2, minSupport: 2 },
    );
    expect([...lists.values()]).toEqual([{ c1: "a", c2: "b", successors: [{ cluster: "e", users: 5 }, { cluster: "c", users: 3 }] }]);
  });

  it("computes Jaccard similarity", () => {
    expect(jaccard(["a", "b"], ["b", "c"])).toBeCloseTo(1 / 3);
    expect(jaccard(["a"], ["a"])).toBe(1);
    expect(jaccard(["a"], ["b"])).toBe(0);
  });
});
