/**
 * `freshrec ingest`: reads clusters, items and events (CSV, JSONL or Parquet in the generic format of
 * README.md "Data", or a MovieLens folder through its adapter), validates every row, and appends everything to the
 * event store in one transaction. A file whose share of bad rows exceeds the threshold fails the whole ingest
 * before anything is written.
 *
 * @example
 * const report = await ingestFiles(store, { clusters: "clusters.csv", items: "items.csv", events: ["events.jsonl"] });
 */
import { BadInputError, type RowProblem } from "../../domain/errors.js";
import type { Cluster, Item } from "../../domain/types.js";
import type { EventStoreContract } from "../event-store.js";
import { EventColumnsBuilder, parseClusters, parseEvents, parseItems, type ParsedFile } from "./catalog-rows.js";
import { readRecords, type RecordFile } from "./records.js";

/** Defaults of IngestOptions; the config's data.* defaults come from here. */
export const INGEST_DEFAULTS = { badRowThreshold: 0.01, reportedBadRows: 20 } as const;

export interface IngestOptions {
  /** @defaultValue 0.01 */
  readonly badRowThreshold?: number;
  /** @defaultValue 20 */
  readonly reportedBadRows?: number;
}

export interface IngestReport {
  /** Events added to the store. */
  readonly events: number;
  /** Items and clusters read from the input (new or updated). */
  readonly items: number;
  readonly clusters: number;
  readonly badRows: number;
  readonly skippedDuplicates: number;
  /** The first `reportedBadRows` problems, with file and line. */
  readonly problems: readonly RowProblem[];
  readonly files: readonly { readonly file: string; readonly rows: number; readonly badRows: number }[];
}

export interface GenericFiles {
  readonly clusters?: string;
  readonly items?: string;
  readonly events?: readonly string[];
}

const REQUIRED: Record<"clusters" | "items" | "events", string[]> = {
  clusters: ["cluster_id", "description"],
  items: ["item_id", "cluster_id"],
  events: ["user_id", "item_id", "ts"],
};

function requireColumns(path: string, file: RecordFile, kind: keyof typeof REQUIRED): void {
  if (file.columns === null) return; // JSON Lines: each line is checked for its fields
  const missing = REQUIRED[kind].filter((c) => !file.columns!.includes(c));
  if (missing.length) {
    throw new BadInputError(`${path}: missing column${missing.length > 1 ? "s" : ""} ${missing.join(", ")} (found: ${file.columns.join(", ") || "none"})`);
  }
}

function requireRows(path: string, file: RecordFile): void {
  if (file.records.length === 0) throw new BadInputError(`${path}: no data rows`);
}

export async function ingestFiles(store: EventStoreContract, files: GenericFiles, options: IngestOptions = {}): Promise<IngestReport> {
  if (!files.clusters && !files.items && !files.events?.length) {
    throw new BadInputError("nothing to ingest: give --clusters, --items and/or --events files (or --dataset movielens --path DIR)");
  }
  const clusters = new Map<string, Cluster>();
  const items = new Map<string, Item>();
  const parsed: ParsedFile[] = [];
  if (files.clusters) {
    const file = await readRecords(files.clusters);
    requireColumns(files.clusters, file, "clusters");
    requireRows(files.clusters, file);
    parsed.push(parseClusters(files.clusters, file.records, clusters));
  }
  const knownClusters = new Set([...(await store.clusters()).map((c) => c.id), ...clusters.keys()]);
  if (files.items) {
    const file = await readRecords(files.items);
    requireColumns(files.items, file, "items");
    requireRows(files.items, file);
    parsed.push(parseItems(files.items, file.records, knownClusters, items));
  }
  const knownItems = new Set([...(await store.itemClusters()).keys(), ...items.keys()]);
  const events = new EventColumnsBuilder();
  for (const path of files.events ?? []) {
    const file = await readRecords(path);
    requireColumns(path, file, "events");
    requireRows(path, file);
    parsed.push(parseEvents(path, file.records, knownItems, events));
  }
  return commitIngest(store, { clusters: [...clusters.values()], items: [...items.values()], events, parsed }, options);
}

/**
 * The last step of every ingest: enforce the bad-row threshold per file, then append in one transaction.
 * Shared by the generic reader and the dataset adapters.
 */
export async function commitIngest(
  store: EventStoreContract,
  input: {
    clusters: readonly Cluster[];
    items: readonly Item[];
    events: EventColumnsBuilder;
    parsed: readonly ParsedFile[];
    meta?: Record<string, string>;
    identity?: Record<string, string>;
  },
  options: IngestOptions = {},
): Promise<IngestReport> {
  const threshold = options.badRowThreshold ?? INGEST_DEFAULTS.badRowThreshold;
  const reported = options.reportedBadRows ?? INGEST_DEFAULTS.reportedBadRows;
  const allProblems = input.parsed.flatMap((p) => p.problems);
  const failing = input.parsed.filter((p) => p.rows > 0 && p.problems.length / p.rows > threshold);
  if (failing.length) {
    const summary = failing
      .map((p) => `${p.file}: ${p.problems.length} of ${p.rows} rows are bad (${((100 * p.problems.length) / p.rows).toFixed(2)}% > ${(100 * threshold).toFixed(2)}%)`)
      .join("; ");
    const shown = allProblems.slice(0, reported);
    const listing = shown.map((p) => `  ${p.file}:${p.line}${p.field ? ` ${p.field}` : ""}: ${p.problem}`).join("\n");
    throw new BadInputError(`${summary}; nothing was written.\n${listing}`, shown);
  }
  const result = await store.append({
    clusters: input.clusters,
    items: input.items,
    events: input.events.length ? input.events.toBatch() : undefined,
    meta: input.meta,
    identity: input.identity,
  });
  return {
    events: result.eventsAdded,
    items: input.items.length,
    clusters: input.clusters.length,
    badRows: allProblems.length,
    skippedDuplicates: result.skippedDuplicates,
    problems: allProblems.slice(0, reported),
    files: input.parsed.map((p) => ({ file: p.file, rows: p.rows, badRows: p.problems.length })),
  };
}
