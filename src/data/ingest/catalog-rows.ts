/**
 * Validation of input records into clusters, items and events. One set of rules for every source (generic
 * files and the MovieLens adapter), so a bad row is judged the same wherever it comes from.
 */
import type { RowProblem } from "../../domain/errors.js";
import type { Cluster, Item } from "../../domain/types.js";
import { dictionaryIndex, type EventBatch, type EventChunk } from "../event-store.js";
import { eventEngagement, eventTime, idProblem } from "./event-fields.js";
import type { FieldValue, InputRecord } from "./records.js";

export interface ParsedFile {
  readonly file: string;
  /** Data rows read (bad ones included). */
  readonly rows: number;
  readonly problems: RowProblem[];
}

function text(value: FieldValue | undefined): string | null {
  if (value === null || value === undefined) return null;
  const s = value instanceof Date ? value.toISOString() : String(value).trim();
  return s === "" ? null : s;
}

/** Visits the readable records of a file, collecting problems for those that are not. */
function eachRecord(
  file: string,
  records: readonly InputRecord[],
  visit: (record: InputRecord, problem: (field: string, problem: string) => void) => void,
): ParsedFile {
  const problems: RowProblem[] = [];
  for (const record of records) {
    if (record.problem) {
      problems.push({ file, line: record.line, ...record.problem });
      continue;
    }
    let bad = false;
    visit(record, (field, problem) => {
      if (!bad) problems.push({ file, line: record.line, field, problem });
      bad = true;
    });
  }
  return { file, rows: records.length, problems };
}

export function parseClusters(file: string, records: readonly InputRecord[], into: Map<string, Cluster>): ParsedFile {
  return eachRecord(file, records, (r, problem) => {
    const id = text(r.values.cluster_id);
    const description = text(r.values.description);
    if (id === null) return problem("cluster_id", "missing");
    if (description === null) return problem("description", "missing");
    into.set(id, { id, description });
  });
}

export function parseItems(file: string, records: readonly InputRecord[], knownClusters: ReadonlySet<string>, into: Map<string, Item>): ParsedFile {
  return eachRecord(file, records, (r, problem) => {
    const id = text(r.values.item_id);
    const clusterId = text(r.values.cluster_id);
    if (id === null) return problem("item_id", "missing");
    if (clusterId === null) return problem("cluster_id", "missing");
    if (!knownClusters.has(clusterId)) return problem("cluster_id", `unknown cluster ${JSON.stringify(clusterId)}`);
    const title = text(r.values.title);
    into.set(id, title === null ? { id, clusterId } : { id, clusterId, title });
  });
}

/** Growable event columns with user and item dictionaries. */
export class EventColumnsBuilder {
  private readonly users = new Map<string, number>();
  private readonly items = new Map<string, number>();
  private userIndex = new Int32Array(1024);
  private itemIndex = new Int32Array(1024);
  private ts = new Float64Array(1024);
  private engagement = new Float32Array(1024);
  length = 0;

  push(userId: string, itemId: string, ts: number, engagement: number): void {
    if (this.length === this.ts.length) this.grow();
    const k = this.length++;
    this.userIndex[k] = dictionaryIndex(this.users, userId);
    this.itemIndex[k] = dictionaryIndex(this.items, itemId);
    this.ts[k] = ts;
    this.engagement[k] = engagement;
  }

  private grow(): void {
    const size = this.ts.length * 2;
    const copy = <T extends Int32Array | Float64Array | Float32Array>(a: T, make: (n: number) => T): T => {
      const b = make(size);
      b.set(a);
      return b;
    };
    this.userIndex = copy(this.userIndex, (n) => new Int32Array(n));
    this.itemIndex = copy(this.itemIndex, (n) => new Int32Array(n));
    this.ts = copy(this.ts, (n) => new Float64Array(n));
    this.engagement = copy(this.engagement, (n) => new Float32Array(n));
  }

  toBatch(): EventBatch {
    const chunk: EventChunk = {
      length: this.length,
      userIndex: this.userIndex.subarray(0, this.length),
      itemIndex: this.itemIndex.subarray(0, this.length),
      ts: this.ts.subarray(0, this.length),
      engagement: this.engagement.subarray(0, this.length),
    };
    return { userIds: [...this.users.keys()], itemIds: [...this.items.keys()], chunks: [chunk] };
  }
}

/** Events of a file, judged by the rules POST /v1/events applies too (./event-fields.ts). */
export function parseEvents(
  file: string,
  records: readonly InputRecord[],
  knownItems: ReadonlySet<string>,
  into: EventColumnsBuilder,
): ParsedFile {
  return eachRecord(file, records, (r, problem) => {
    const userId = text(r.values.user_id) ?? "";
    const itemId = text(r.values.item_id) ?? "";
    const badUser = idProblem(userId);
    if (badUser !== null) return problem("user_id", badUser);
    const badItem = idProblem(itemId);
    if (badItem !== null) return problem("item_id", badItem);
    const ts = eventTime(r.values.ts);
    if (typeof ts !== "number") return problem("ts", ts.problem);
    const engagement = eventEngagement(r.values.engagement);
    if (engagement !== null && typeof engagement !== "number") return problem("engagement", engagement.problem);
    if (!knownItems.has(itemId)) return problem("item_id", `unknown item ${JSON.stringify(itemId)}`);
    into.push(userId, itemId, ts, engagement ?? Number.NaN);
  });
}
