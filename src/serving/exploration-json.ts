/**
 * The JSON body of GET /v1/users/{id}/exploration, written from an indexed answer: the body (~5 KB for 10 clusters
 * x 3 items) cost a fifth of a request's server time through the compiled serializer, mostly escaping the same
 * cluster descriptions and item titles on every request and flattening the result. Here each cluster's
 * `"cluster":…,"description":…` and each item's `{"itemId":…,"title":…,"score":` are escaped once per catalog, by
 * catalog index (an array read, where a Map keyed by id cost as much as the escaping it saved); ranks, scores,
 * sources and the request's own fields are written per response.
 *
 * The output is byte for byte `JSON.stringify(explorationResponse(...))` (same key order, escaping and numbers),
 * which the tests check on real and adversarial answers, and the server on every response with `validateResponses`.
 *
 * Fragments belong to one `Catalog` (immutable while serving, see ./catalog.ts): `ExplorationJsonWriter.of(catalog)`
 * gives each catalog its own, so a catalog with other titles or descriptions never reads another's fragments.
 *
 * @example
 * const json = ExplorationJsonWriter.of(catalog).write(answer, { model: { live: null }, experiment: null, requestId });
 */
import type { Catalog } from "./catalog.js";
import type { ExplorationAnswer, IndexedExplorationAnswer } from "./exploration.js";

/** What the route adds to an answer. */
export interface ExplorationResponseExtras {
  readonly model: { readonly live: string | null };
  readonly experiment: { readonly name: string; readonly arm: string; readonly exposureId: string } | null;
  readonly requestId: string;
}

/** The response object of the route, in the documented key order (src/serving/schemas.ts). */
export function explorationResponse(answer: ExplorationAnswer, extras: ExplorationResponseExtras) {
  return {
    userId: answer.userId,
    history: answer.history,
    coldStart: answer.coldStart,
    fallback: answer.fallback,
    table: answer.table,
    model: extras.model,
    experiment: extras.experiment,
    requestId: extras.requestId,
    recommendations: answer.recommendations,
  };
}

const str = JSON.stringify as (value: string) => string;
/** JSON.stringify's number format: shortest round-trip text, non-finite numbers as null. */
const num = (value: number) => (Number.isFinite(value) ? String(value) : "null");
/** Joined, not concatenated: a flat string, so reusing a fragment copies it without walking a rope. */
const flat = (...parts: string[]) => parts.join("");

const writers = new WeakMap<Catalog, ExplorationJsonWriter>();

export class ExplorationJsonWriter {
  private readonly clusterJson: (string | undefined)[];
  private readonly itemJson: (string | undefined)[];
  private readonly sourceTail = new Map<string, string>();

  private constructor(private readonly catalog: Catalog) {
    this.clusterJson = new Array<string | undefined>(catalog.clusterCount);
    this.itemJson = new Array<string | undefined>(catalog.itemCount);
  }

  /** The writer of a catalog (one per catalog object). */
  static of(catalog: Catalog): ExplorationJsonWriter {
    let writer = writers.get(catalog);
    if (writer === undefined) writers.set(catalog, (writer = new ExplorationJsonWriter(catalog)));
    return writer;
  }

  write(answer: IndexedExplorationAnswer, extras: ExplorationResponseExtras): string {
    const { catalog } = this;
    const { history, table } = answer;
    const { experiment } = extras;
    let out = `{"userId":${str(answer.userId)},"history":`;
    out += history === null ? "null" : `{"c1":${str(catalog.clusterIds[history.c1])},"c2":${str(catalog.clusterIds[history.c2])}}`;
    out += `,"coldStart":${answer.coldStart},"fallback":${answer.fallback === null ? "null" : str(answer.fallback)},"table":`;
    out += table === null ? "null" : `{"version":${str(table.version)},"modelVersion":${str(table.modelVersion)}}`;
    out += `,"model":{"live":${extras.model.live === null ? "null" : str(extras.model.live)}},"experiment":`;
    out += experiment === null ? "null" : `{"name":${str(experiment.name)},"arm":${str(experiment.arm)},"exposureId":${str(experiment.exposureId)}}`;
    out += `,"requestId":${str(extras.requestId)},"recommendations":[`;
    const { clusters, scores } = answer;
    for (let k = 0; k < clusters.length; k++) {
      out += k === 0 ? `{"rank":${k},` : `,{"rank":${k},`;
      out += this.cluster(clusters[k]);
      out += `,"score":${num(scores[k])},"items":[`;
      const items = answer.items[k] ?? [];
      for (let i = 0; i < items.length; i++) {
        const item = items[i];
        if (i > 0) out += ",";
        out += this.item(item.item);
        out += num(item.score);
        out += this.source(item.source);
      }
      out += "]}";
    }
    return `${out}]}`;
  }

  /** `"cluster":ID,"description":TEXT` */
  private cluster(c: number): string {
    return (this.clusterJson[c] ??= flat('"cluster":', str(this.catalog.clusterIds[c]), ',"description":', str(this.catalog.descriptions[c])));
  }

  /** `{"itemId":ID,"title":TEXT,"score":` */
  private item(i: number): string {
    const title = this.catalog.itemTitles[i];
    return (this.itemJson[i] ??= flat('{"itemId":', str(this.catalog.itemIds[i]), ',"title":', title === null ? "null" : str(title), ',"score":'));
  }

  /** `,"source":NAME}` (a policy names a handful of sources). */
  private source(source: string): string {
    let tail = this.sourceTail.get(source);
    if (tail === undefined) {
      tail = flat(',"source":', str(source), "}");
      if (this.sourceTail.size < 64) this.sourceTail.set(source, tail);
    }
    return tail;
  }
}
