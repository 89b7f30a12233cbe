/**
 * Prometheus metrics of the server, rendered in the text exposition format (version 0.0.4) at GET /metrics.
 * Counters, gauges and one histogram family are enough here, so they are written out directly rather than through
 * a client library: observing a latency is one binary search and two increments.
 *
 * @example
 * const metrics = new ServerMetrics();
 * metrics.observeRequest("GET", "/v1/users/:id/exploration", 200, 0.0007);
 * metrics.coldStarts++;
 * reply.type(PROMETHEUS_CONTENT_TYPE).send(metrics.render({ liveTable: "t000004", ... }));
 */
import type { IntakeBufferStatus } from "../data/intake-buffer.js";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Latency buckets in seconds: serving answers in well under a millisecond, admin routes may take a second. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const;

class Histogram {
  readonly counts = new Float64Array(LATENCY_BUCKETS.length + 1);
  sum = 0;
  count = 0;
  observe(seconds: number): void {
    let lo = 0;
    let hi: number = LATENCY_BUCKETS.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (seconds <= LATENCY_BUCKETS[mid]) hi = mid;
      else lo = mid + 1;
    }
    this.counts[lo]++;
    this.sum += seconds;
    this.count++;
  }
}

/** What the server state contributes at render time. */
export interface MetricsSnapshot {
  readonly liveTable: { readonly version: string; readonly modelVersion: string } | null;
  readonly liveModel: string | null;
  readonly users: number;
  readonly experiment: { readonly name: string; readonly arms: readonly string[] } | null;
  readonly groundingAgeSeconds: number | null;
  /** Whether the catalog has changes the grounding index does not hold yet. */
  readonly groundingStale?: boolean;
  /** The intake store's upkeep in quiet moments (a DuckDB checkpoint): runs that did work, and failures. */
  readonly intakeUpkeep?: { readonly ran: number; readonly failed: number };
  /** The DuckDB store's intake buffer and its mover (../data/intake-buffer.ts); null or absent on PostgreSQL. */
  readonly intakeBuffer?: IntakeBufferStatus | null;
  /** Every table binding the server follows, and whether its latest reload failed. */
  readonly tableBindings: readonly { readonly binding: string; readonly reloadFailing: boolean }[];
  /** How the server follows a shared store's appends; null or absent on the embedded workspace. */
  readonly storeFollow?: {
    readonly listening: boolean;
    readonly disconnects: number;
    readonly appliedThrough: number;
    readonly storeLatest: number;
    readonly failing: number;
    readonly lastCaughtUpAt: number | null;
    readonly catchUps: number;
    readonly catchUpErrors: number;
    readonly eventsApplied: number;
    readonly itemsAdded: number;
    readonly itemsChanged: number;
    readonly usersReloaded: number;
  } | null;
  /** The server clock's now (epoch ms), for ages. */
  readonly now?: number;
}

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const labels = (pairs: Record<string, string>) =>
  `{${Object.entries(pairs)
    .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
    .join(",")}}`;

export class ServerMetrics {
  private readonly latency = new Map<string, { method: string; route: string; histogram: Histogram }>();
  private readonly requests = new Map<string, { method: string; route: string; status: string; count: number }>();
  lookupMisses = 0;
  coldStarts = 0;
  unknownClusterFallbacks = 0;
  eventsIngested = 0;
  eventsSkippedUnknown = 0;
  duplicateEvents = 0;
  intakeBatches = 0;
  idempotentReplays = 0;
  exposuresLogged = 0;
  outcomesAttributed = 0;
  tableReloads = 0;
  tableReloadErrors = 0;
  groundingRebuilds = 0;
  authFailures = 0;

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    const key = `${method} ${route}`;
    let entry = this.latency.get(key);
    if (!entry) this.latency.set(key, (entry = { method, route, histogram: new Histogram() }));
    entry.histogram.observe(seconds);
    const statusKey = `${key} ${status}`;
    const counter = this.requests.get(statusKey);
    if (counter) counter.count++;
    else this.requests.set(statusKey, { method, route, status: String(status), count: 1 });
  }

  render(snapshot: MetricsSnapshot): string {
    const out: string[] = [];
    const family = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);

    family("freshrec_http_request_duration_seconds", "histogram", "Latency of HTTP requests by route.");
    for (const { method, route, histogram } of this.latency.values()) {
      let cumulative = 0;
      LATENCY_BUCKETS.forEach((le, k) => {
        cumulative += histogram.counts[k];
        out.push(`freshrec_http_request_duration_seconds_bucket${labels({ method, route, le: String(le) })} ${cumulative}`);
      });
      out.push(`freshrec_http_request_duration_seconds_bucket${labels({ method, route, le: "+Inf" })} ${histogram.count}`);
      out.push(`freshrec_http_request_duration_seconds_sum${labels({ method, route })} ${histogram.sum}`);
      out.push(`freshrec_http_request_duration_seconds_count${labels({ method, route })} ${histogram.count}`);
    }
    family("freshrec_http_requests_total", "counter", "HTTP requests by route and status code.");
    for (const r of this.requests.values()) out.push(`freshrec_http_requests_total${labels({ method: r.method, route: r.route, status: r.status })} ${r.count}`);

    family("freshrec_live_table_info", "gauge", "The table serving the live binding (value 1), with the model that made it.");
    if (snapshot.liveTable) out.push(`freshrec_live_table_info${labels({ version: snapshot.liveTable.version, model_version: snapshot.liveTable.modelVersion })} 1`);
    family("freshrec_live_model_info", "gauge", "The model registry's live model (value 1).");
    if (snapshot.liveModel) out.push(`freshrec_live_model_info${labels({ version: snapshot.liveModel })} 1`);
    family("freshrec_experiment_info", "gauge", "The active experiment and its arms (value 1 per arm).");
    if (snapshot.experiment) for (const arm of snapshot.experiment.arms) out.push(`freshrec_experiment_info${labels({ experiment: snapshot.experiment.name, arm })} 1`);

    const counters: [string, string, number][] = [
      ["freshrec_table_lookup_misses_total", "Exploration requests whose history pair the table knows both clusters of but has no row for (served the popular-novel answer).", this.lookupMisses],
      ["freshrec_cold_starts_total", "Exploration requests for users with fewer than two clusters (served the cold-start answer).", this.coldStarts],
      [
        "freshrec_unknown_cluster_fallbacks_total",
        "Exploration requests whose history names a cluster the answering table does not know, one newer than the table (served the popular-novel answer).",
        this.unknownClusterFallbacks,
      ],
      ["freshrec_events_ingested_total", "Events written to the event store by POST /v1/events.", this.eventsIngested],
      ["freshrec_events_duplicate_total", "Events of accepted batches that were already stored.", this.duplicateEvents],
      ["freshrec_events_unknown_item_skipped_total", "Events skipped because their item is not in the catalog (unknownItems: skip).", this.eventsSkippedUnknown],
      ["freshrec_intake_batches_total", "Accepted POST /v1/events batches.", this.intakeBatches],
      ["freshrec_intake_idempotent_replays_total", "POST /v1/events answered from an earlier request with the same idempotency key.", this.idempotentReplays],
      ["freshrec_experiment_exposures_total", "Exploration slots logged as experiment exposures.", this.exposuresLogged],
      ["freshrec_experiment_outcomes_total", "Experiment outcomes attributed from ingested events.", this.outcomesAttributed],
      ["freshrec_table_reloads_total", "Swaps of an in-memory table after a publish or rollback.", this.tableReloads],
      ["freshrec_table_reload_errors_total", "Table reloads that failed (the previous table kept serving).", this.tableReloadErrors],
      ["freshrec_grounding_rebuilds_total", "Rebuilds of the item grounding index.", this.groundingRebuilds],
      ["freshrec_admin_auth_failures_total", "Admin requests refused (401 or 403).", this.authFailures],
    ];
    for (const [name, help, value] of counters) {
      family(name, "counter", help);
      out.push(`${name} ${value}`);
    }
    family("freshrec_table_reload_failing", "gauge", "1 while the latest reload of a binding's table failed (it serves an older table than the store says; GET /readyz answers 503), else 0.");
    for (const b of snapshot.tableBindings) out.push(`freshrec_table_reload_failing${labels({ binding: b.binding })} ${b.reloadFailing ? 1 : 0}`);
    const follow = snapshot.storeFollow;
    if (follow) {
      const gauges: [string, string, number][] = [
        ["freshrec_store_listener_connected", "1 while the connection that hears the shared store's notifications is up; 0 while it reconnects (the poll still follows).", follow.listening ? 1 : 0],
        ["freshrec_store_appends_behind", "Appends the store committed that this replica knows of and has not applied yet.", Math.max(0, follow.storeLatest - follow.appliedThrough)],
        ["freshrec_store_applied_append", "The last append (the store's commit-ordered number) applied to this replica's histories and catalog.", follow.appliedThrough],
        ["freshrec_store_catchup_failing", "Failed catch-ups with the store's appends in a row (0 while following).", follow.failing],
      ];
      if (follow.lastCaughtUpAt !== null && snapshot.now !== undefined) {
        gauges.push(["freshrec_store_last_catchup_age_seconds", "Seconds since the last successful catch-up with the store's appends.", (snapshot.now - follow.lastCaughtUpAt) / 1000]);
      }
      for (const [name, help, value] of gauges) {
        family(name, "gauge", help);
        out.push(`${name} ${value}`);
      }
      const followCounters: [string, string, number][] = [
        ["freshrec_store_listener_disconnects_total", "Losses of the connection that hears the shared store's notifications.", follow.disconnects],
        ["freshrec_store_catchups_total", "Catch-ups with the store's appends that succeeded (including those that found nothing new).", follow.catchUps],
        ["freshrec_store_catchup_errors_total", "Catch-ups with the store's appends that failed (retried at the next notification or poll).", follow.catchUpErrors],
        ["freshrec_store_events_followed_total", "Events appended to the store (by any process) applied to this replica's histories by following it.", follow.eventsApplied],
        ["freshrec_store_items_followed_total", "Items other processes added to the store that this replica's catalog took.", follow.itemsAdded],
        ["freshrec_store_items_changed_total", "Items this replica's catalog held that another process moved to another cluster or retitled, taken in place.", follow.itemsChanged],
        ["freshrec_store_users_reloaded_total", "Users whose histories were read again from the store because an item of their events moved to another cluster.", follow.usersReloaded],
      ];
      for (const [name, help, value] of followCounters) {
        family(name, "counter", help);
        out.push(`${name} ${value}`);
      }
    }
    family("freshrec_users_known", "gauge", "Users with events held in memory.");
    out.push(`freshrec_users_known ${snapshot.users}`);
    family("freshrec_grounding_index_age_seconds", "gauge", "Seconds since the grounding index was built.");
    if (snapshot.groundingAgeSeconds !== null) out.push(`freshrec_grounding_index_age_seconds ${snapshot.groundingAgeSeconds}`);
    if (snapshot.groundingStale !== undefined) {
      family("freshrec_grounding_stale", "gauge", "1 while the catalog has changes the grounding index does not hold yet (a rebuild runs, or the one after the change failed and the next poll retries it), else 0.");
      out.push(`freshrec_grounding_stale ${snapshot.groundingStale ? 1 : 0}`);
    }
    if (snapshot.intakeUpkeep !== undefined) {
      family("freshrec_intake_upkeep_total", "counter", "Upkeep runs of the event store in intake's quiet moments that did work (a DuckDB checkpoint of the event store or of its intake buffer).");
      out.push(`freshrec_intake_upkeep_total ${snapshot.intakeUpkeep.ran}`);
      family("freshrec_intake_upkeep_failures_total", "counter", "Upkeep runs of the event store in intake's quiet moments that failed (the intake buffer's mover then checkpoints the store after a later move, once its log is full).");
      out.push(`freshrec_intake_upkeep_failures_total ${snapshot.intakeUpkeep.failed}`);
    }
    const buffer = snapshot.intakeBuffer;
    if (buffer) {
      const series: [string, string, string, number][] = [
        ["freshrec_intake_buffer_backlog_rows", "gauge", "Rows intake (and the experiment log) wrote to the intake buffer that the mover has not moved into the event store yet.", buffer.backlog],
        ["freshrec_intake_buffer_moves_total", "counter", "Moves of the intake buffer into the event store that moved rows.", buffer.moves],
        ["freshrec_intake_buffer_rows_moved_total", "counter", "Rows the mover moved into the event store.", buffer.rowsMoved],
        ["freshrec_intake_buffer_move_failures_total", "counter", "Moves that failed (rolled back: the rows stay buffered, and the move is retried).", buffer.moveFailures],
        ["freshrec_intake_buffer_checkpoints_total", "counter", "Checkpoints of the intake buffer's file the mover ran.", buffer.bufferCheckpoints],
        ["freshrec_intake_buffer_store_checkpoints_total", "counter", "Checkpoints of the event store the mover ran once its log reached the size DuckDB would have checkpointed it at.", buffer.storeCheckpoints],
      ];
      for (const [name, type, help, value] of series) {
        family(name, type, help);
        out.push(`${name} ${value}`);
      }
    }
    return `${out.join("\n")}\n`;
  }
}
