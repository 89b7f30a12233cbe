/**
 * Hears a PostgreSQL store's changes as they commit: publish and rollback notify `freshrec_tables`
 * (src/tables/postgres-store.ts), review decisions and new live models `freshrec_models` (src/llm/postgres-registry.ts),
 * appended events, items and clusters `freshrec_events` (src/data/postgres-event-store.ts). A server acts on each
 * notification instead of waiting for its next poll, so every replica follows a change within a round trip.
 *
 * A notification sent while the connection is down is lost for good, so:
 * - a dropped connection is reported (`onError`), and reopened after a pause that doubles from `retryMs` up to
 *   `maxRetryMs`, for as long as the listener is open; `connected` says which state it is in;
 * - every reconnection calls `onConnect` once it listens again: the server then catches up from what it holds
 *   (the live pointer, the last append it applied), which is what makes a lost notification cost a delay, never a
 *   change;
 * - the server's poll goes on meanwhile, and covers the time the connection is down.
 *
 * @example
 * const listener = await listenForChanges(url, [TABLES_CHANNEL], () => void tables.poll(), (e) => log.error(e));
 * listener.connected; // false while reconnecting
 * await listener.close();
 */
import pg from "pg";
import { redactedUrl } from "../data/postgres-event-store.js";
import { FreshrecError } from "../domain/errors.js";

export interface ChangeListener {
  /** Whether the listening connection is up (false from its loss until it listens again). */
  readonly connected: boolean;
  /** Connections lost since the listener opened. */
  readonly disconnects: number;
  close(): Promise<void>;
}

export interface ListenOptions {
  /** After a reconnection listens again (not after the first connection). */
  readonly onConnect?: () => void;
  /** Told once each time the connection is lost. */
  readonly onDisconnect?: () => void;
  /** First pause before reconnecting. @defaultValue 250 */
  readonly retryMs?: number;
  /** Longest pause between reconnection attempts. @defaultValue 10_000 */
  readonly maxRetryMs?: number;
  /**
   * The connection's application_name, so an operator can find it in pg_stat_activity.
   * @defaultValue "freshrec listener <pid>"
   */
  readonly applicationName?: string;
}

export async function listenForChanges(
  url: string,
  channels: readonly string[],
  onChange: (channel: string, payload: string | undefined) => void,
  onError: (error: Error) => void,
  options: ListenOptions = {},
): Promise<ChangeListener> {
  const retryMs = options.retryMs ?? 250;
  const maxRetryMs = options.maxRetryMs ?? 10_000;
  const applicationName = options.applicationName ?? `freshrec listener ${process.pid}`;
  let closing = false;
  let client: pg.Client | null = null;
  let connected = false;
  let disconnects = 0;
  let retry: NodeJS.Timeout | null = null;
  let pause = retryMs;

  const connect = async (): Promise<pg.Client> => {
    const next = new pg.Client({ connectionString: url, application_name: applicationName });
    let lost = false;
    const onLost = (error: Error) => {
      // 'error' and 'end' both come when the server ends the connection: one loss, told once.
      if (lost || closing || client !== next) return;
      lost = true;
      connected = false;
      disconnects++;
      onError(error);
      options.onDisconnect?.();
      schedule();
    };
    next.on("error", onLost);
    next.on("end", () => onLost(new Error("the listening connection ended")));
    next.on("notification", (message) => onChange(message.channel, message.payload));
    try {
      await next.connect();
      // Channel names are this program's constants, never user input; quoted as identifiers all the same.
      for (const channel of channels) await next.query(`LISTEN "${channel.replace(/"/g, '""')}"`);
    } catch (error) {
      lost = true;
      await next.end().catch(() => {});
      throw error;
    }
    return next;
  };

  const schedule = () => {
    if (closing || retry !== null) return;
    retry = setTimeout(() => {
      retry = null;
      void reconnect();
    }, pause);
    retry.unref();
    pause = Math.min(pause * 2, maxRetryMs);
  };

  const reconnect = async () => {
    if (closing) return;
    try {
      const next = await connect();
      if (closing) {
        await next.end().catch(() => {});
        return;
      }
      client = next;
      connected = true;
      pause = retryMs;
      options.onConnect?.();
    } catch (error) {
      onError(error as Error);
      schedule();
    }
  };

  try {
    client = await connect();
    connected = true;
  } catch (error) {
    throw new FreshrecError("INTERNAL", `cannot listen for changes on ${redactedUrl(url)}: ${(error as Error).message}`, { cause: error });
  }
  return {
    get connected() {
      return connected;
    },
    get disconnects() {
      return disconnects;
    },
    close: async () => {
      closing = true;
      if (retry !== null) clearTimeout(retry);
      connected = false;
      await client?.end().catch(() => {});
    },
  };
}
