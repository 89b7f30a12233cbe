/**
 * The item policy contract, as a suite every adapter runs (src/serving/grounding/contract.ts): items of exactly the
 * requested cluster, never one the user has seen, at most n, no repeats, one list per cluster in request order, and
 * the same answer for the same request.
 */
import { describe, expect, it } from "vitest";
import type { Catalog } from "../../src/serving/catalog.js";
import type { GroundingRequest, ItemPolicy } from "../../src/serving/grounding/index.js";

export interface ConformanceSetup {
  readonly policy: ItemPolicy;
  readonly catalog: Catalog;
  /** Users with recent items to ground for. */
  readonly requests: readonly Omit<GroundingRequest, "n" | "clusters" | "isSeen">[];
}

export function itemPolicyConformance(name: string, setup: () => ConformanceSetup): void {
  describe(`item policy conformance: ${name}`, () => {
    const clustersOf = (catalog: Catalog) => Array.from({ length: catalog.clusterCount }, (_, c) => c);

    it("returns, per requested cluster and in order, at most n distinct items of exactly that cluster", async () => {
      const { policy, catalog, requests } = setup();
      const clusters = clustersOf(catalog);
      for (const request of requests) {
        const lists = await policy.ground({ ...request, clusters, n: 4, isSeen: () => false });
        expect(lists).toHaveLength(clusters.length);
        lists.forEach((items, k) => {
          expect(items.length).toBeLessThanOrEqual(4);
          expect(new Set(items.map((i) => i.item)).size).toBe(items.length);
          for (const i of items) {
            expect(catalog.itemCluster[i.item]).toBe(clusters[k]);
            expect(Number.isFinite(i.score)).toBe(true);
            expect(i.source).toEqual(expect.any(String));
          }
        });
        // Every cluster of the fixture has at least 4 items, so a policy must fill every list.
        expect(lists.every((l) => l.length === 4)).toBe(true);
      }
    });

    it("never returns an item the user has seen", async () => {
      const { policy, catalog, requests } = setup();
      const clusters = clustersOf(catalog);
      for (const request of requests) {
        const first = await policy.ground({ ...request, clusters, n: 3, isSeen: () => false });
        const seen = new Set(first.flat().map((i) => i.item));
        const second = await policy.ground({ ...request, clusters, n: 3, isSeen: (i) => seen.has(i) });
        for (const i of second.flat()) expect(seen.has(i.item)).toBe(false);
      }
    });

    it("returns fewer items when the cluster runs out of unseen ones", async () => {
      const { policy, catalog, requests } = setup();
      const c = 0;
      const all = new Set(Array.from(catalog.itemCluster.keys()).filter((i) => catalog.itemCluster[i] === c));
      const [only] = await policy.ground({ ...requests[0], clusters: [c], n: 5, isSeen: (i) => all.has(i) });
      expect(only).toEqual([]);
    });

    it("is deterministic", async () => {
      const { policy, catalog, requests } = setup();
      const clusters = clustersOf(catalog);
      for (const request of requests) {
        const a = await policy.ground({ ...request, clusters, n: 3, isSeen: () => false });
        const b = await policy.ground({ ...request, clusters, n: 3, isSeen: () => false });
        expect(b).toEqual(a);
      }
    });
  });
}
