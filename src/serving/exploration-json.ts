/**
 * The JSON body of GET /v1/users/{id}/exploration, written from an indexed answer: the body (~5 KB for 10 clusters
 * x 3 items) cost a fifth of a request's server time through the compiled serializer, mostly escaping the same
 * cluster descriptions and item titles on every request and flattening the result. Here each cluster's
 * `"cluster":…,"description":…,"score":` and each item's `{"itemId":…,"title":…,"score":` are escaped and encoded
 * to UTF-8 once per catalog, by catalog index (an array read, where a Map keyed by id cost as much as the escaping it
 * saved); ranks, scores, sources and the request's own fields are written per response. The body is written as
 * bytes into one reused buffer: built as a string, it was concatenated from ~200 pieces, flattened, measured for
 * Content-Length and encoded again by the socket write, per response (in a CPU profile of the serve bench's server,
 * writing and measuring took 14% of the samples, finding the answer 16%). Formatting scores (String of a double) was
 * then most of the writer's time, so number texts are memoized by value.
 *
 * The output is byte for byte `JSON.stringify(explorationResponse(...))` (same key order, escaping and numbers),
 * which the tests check on real and adversarial answers, and the server on every response with `validateResponses`.
 *
 * Fragments belong to one `Catalog`: `ExplorationJsonWriter.of(catalog)` gives each catalog its own, so a catalog with
 * other titles or descriptions never reads another's fragments; and a catalog that takes new descriptions or titles in
 * place (a shared store's, see ./catalog.ts) moves its `revision`, upon which the writer forgets its fragments.
 *
 * @example
 * const body = ExplorationJsonWriter.of(catalog).bytes(answer, { model: { live: null }, experiment: null, requestId }); // a Buffer
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
/** UTF-8 bytes of a text. */
const utf8 = (text: string) => Buffer.from(text, "utf8");
const FALLBACK_JSON = new Map<string | null, Buffer>([null, "cold-start", "unknown-cluster", "lookup-miss", "no-table"].map((f) => [f, utf8(f === null ? "null" : str(f))]));

const EMPTY_BYTES = Buffer.alloc(0);
const writers = new WeakMap<Catalog, ExplorationJsonWriter>();
const SLAB_BYTES = 256 * 1024;
const NUMBER_CACHE_SIZE = 1 << 14;
const NUMBER_CACHE_SHIFT = 32 - 14;
/**
 * A number's cache slot: its value (8 bytes), its text's length (1 byte) and its text (the rest), so that a hit reads
 * one cache line where a value array, a text array and the text were three. Longer texts (23+ characters: a negative
 * 17-digit score with an exponent) are not kept.
 */
const NUMBER_SLOT_BYTES = 32;
const NUMBER_TEXT_MAX = NUMBER_SLOT_BYTES - 9;
const NUMBER_BITS = new Float64Array(1);
const NUMBER_WORDS = new Uint32Array(NUMBER_BITS.buffer);

export class ExplorationJsonWriter {
  /** Per cluster index: `"cluster":ID,"description":TEXT,"score":` */
  private clusterJson: (Buffer | undefined)[];
  /** Per item index: `{"itemId":ID,"title":TEXT,"score":` */
  private itemJson: (Buffer | undefined)[];
  /** Per cluster index: `{"c1":ID` and `,"c2":ID}` of a history. */
  private c1Json: (Buffer | undefined)[];
  private c2Json: (Buffer | undefined)[];
  /** The catalog's revision the fragments were made at: a shared store's catalog takes new descriptions and titles in place. */
  private revision: number;
  private readonly sourceTail = new Map<string, Buffer>();
  /** The two sources written last and their fragments. */
  private readonly lastSources: (string | null)[] = [null, null];
  private readonly lastSourceTails: Buffer[] = [EMPTY_BYTES, EMPTY_BYTES];
  /** `{"version":…,"modelVersion":…}` of the last table written (a server answers from one or a few). */
  private lastTable: { readonly version: string; readonly modelVersion: string } | null = null;
  private lastTableJson = utf8("null");
  private lastModel: string | null = null;
  private lastModelJson = utf8("null");
  /**
   * Bodies are written one after another into a slab and each is handed out as a view of its bytes (as Node pools
   * small Buffers): no copy, and no ArrayBuffer per response (each one is external memory V8 counts towards its
   * next GC). A slab is written once, front to back, and freed when the last response in it is.
   */
  private out = Buffer.allocUnsafeSlow(SLAB_BYTES);
  /** Where the body being written starts in `out`, and where it is up to. */
  private start = 0;
  private at = 0;
  /**
   * Number texts by value, direct-mapped on the value's bits: scores repeat (float32 table scores, co-visitation sums
   * of counts). Slots of NUMBER_SLOT_BYTES: the value as a double (read through `numberKeys`), its text's length, the text.
   */
  private readonly numberSlots = new ArrayBuffer(NUMBER_CACHE_SIZE * NUMBER_SLOT_BYTES);
  private readonly numberKeys = new Float64Array(this.numberSlots).fill(Number.NaN);
  private readonly numberBytes = new Uint8Array(this.numberSlots);

  private constructor(private readonly catalog: Catalog) {
    this.revision = catalog.revision;
    this.clusterJson = new Array<Buffer | undefined>(catalog.clusterCount);
    this.itemJson = new Array<Buffer | undefined>(catalog.itemCount);
    this.c1Json = new Array<Buffer | undefined>(catalog.clusterCount);
    this.c2Json = new Array<Buffer | undefined>(catalog.clusterCount);
  }

  /** Forgets every fragment (the catalog's text changed in place): they are made again as requests need them. */
  private forgetFragments(): void {
    this.revision = this.catalog.revision;
    this.clusterJson = new Array<Buffer | undefined>(this.catalog.clusterCount);
    this.itemJson = new Array<Buffer | undefined>(this.catalog.itemCount);
    this.c1Json = new Array<Buffer | undefined>(this.catalog.clusterCount);
    this.c2Json = new Array<Buffer | undefined>(this.catalog.clusterCount);
  }

  /** The writer of a catalog (one per catalog object). */
  static of(catalog: Catalog): ExplorationJsonWriter {
    let writer = writers.get(catalog);
    if (writer === undefined) writers.set(catalog, (writer = new ExplorationJsonWriter(catalog)));
    return writer;
  }

  /** The body as text (what `bytes` writes, decoded). */
  write(answer: IndexedExplorationAnswer, extras: ExplorationResponseExtras): string {
    return this.bytes(answer, extras).toString("utf8");
  }

  /**
   * The body as UTF-8 bytes, what the route sends: written into one reused buffer from byte fragments (no string is
   * concatenated, flattened, measured and encoded again per response), then copied out.
   */
  bytes(answer: IndexedExplorationAnswer, extras: ExplorationResponseExtras): Buffer {
    const { catalog } = this;
    if (catalog.revision !== this.revision) this.forgetFragments();
    const { history, table } = answer;
    const { experiment } = extras;
    this.start = this.at;
    this.ascii('{"userId":');
    this.text(str(answer.userId));
    this.ascii(',"history":');
    if (history === null) this.ascii("null");
    else {
      this.put((this.c1Json[history.c1] ??= utf8(`{"c1":${str(catalog.clusterIds[history.c1])}`)));
      this.put((this.c2Json[history.c2] ??= utf8(`,"c2":${str(catalog.clusterIds[history.c2])}}`)));
    }
    this.ascii(answer.coldStart ? ',"coldStart":true,"fallback":' : ',"coldStart":false,"fallback":');
    this.put(FALLBACK_JSON.get(answer.fallback) ?? utf8(str(answer.fallback!)));
    this.ascii(',"table":');
    if (table !== this.lastTable) {
      this.lastTableJson = utf8(table === null ? "null" : `{"version":${str(table.version)},"modelVersion":${str(table.modelVersion)}}`);
      this.lastTable = table;
    }
    this.put(this.lastTableJson);
    this.ascii(',"model":{"live":');
    const live = extras.model.live;
    if (live !== this.lastModel) {
      this.lastModelJson = utf8(live === null ? "null" : str(live));
      this.lastModel = live;
    }
    this.put(this.lastModelJson);
    this.ascii('},"experiment":');
    if (experiment === null) this.ascii("null");
    else this.text(`{"name":${str(experiment.name)},"arm":${str(experiment.arm)},"exposureId":${str(experiment.exposureId)}}`);
    this.ascii(',"requestId":');
    this.text(str(extras.requestId));
    this.ascii(',"recommendations":[');
    const { clusters, scores } = answer;
    for (let k = 0; k < clusters.length; k++) {
      this.ascii(k === 0 ? '{"rank":' : ',{"rank":');
      this.number(k);
      this.ascii(",");
      this.put(this.cluster(clusters[k]));
      this.number(scores[k]);
      this.ascii(',"items":[');
      const items = answer.items[k] ?? [];
      for (let i = 0; i < items.length; i++) {
        const item = items[i];
        if (i > 0) this.ascii(",");
        this.put(this.item(item.item));
        this.number(item.score);
        this.put(this.source(item.source));
      }
      this.ascii("]}");
    }
    this.ascii("]}");
    const body = this.out.subarray(this.start, this.at);
    // The next body starts 8-byte aligned, as Node's pool does.
    this.at = Math.min(this.out.length, (this.at + 7) & ~7);
    return body;
  }

  /** `"cluster":ID,"description":TEXT,"score":` */
  private cluster(c: number): Buffer {
    return (this.clusterJson[c] ??= utf8(`"cluster":${str(this.catalog.clusterIds[c])},"description":${str(this.catalog.descriptions[c])},"score":`));
  }

  /** `{"itemId":ID,"title":TEXT,"score":` */
  private item(i: number): Buffer {
    // The title is read only to make the fragment: a catalog-sized array read per item is a cache miss on a server.
    return (this.itemJson[i] ??= this.itemFragment(i));
  }

  private itemFragment(i: number): Buffer {
    const title = this.catalog.itemTitles[i];
    return utf8(`{"itemId":${str(this.catalog.itemIds[i])},"title":${title === null ? "null" : str(title)},"score":`);
  }

  /** `,"source":NAME}` (a policy names a handful of sources). */
  private source(source: string): Buffer {
    // The embedded policies name two sources, each one string: compared by identity first, no Map lookup.
    if (source === this.lastSources[0]) return this.lastSourceTails[0];
    if (source === this.lastSources[1]) return this.lastSourceTails[1];
    let tail = this.sourceTail.get(source);
    if (tail === undefined) {
      tail = utf8(`,"source":${str(source)}}`);
      if (this.sourceTail.size < 64) this.sourceTail.set(source, tail);
    }
    this.lastSources[1] = this.lastSources[0];
    this.lastSourceTails[1] = this.lastSourceTails[0];
    this.lastSources[0] = source;
    this.lastSourceTails[0] = tail;
    return tail;
  }

  /** Room for `bytes` more bytes: a new slab when this one is full, the body so far moved to its start. */
  private reserve(bytes: number): void {
    if (this.at + bytes <= this.out.length) return;
    const written = this.at - this.start;
    const slab = Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, 2 * (written + bytes)));
    this.out.copy(slab, 0, this.start, this.at);
    this.out = slab;
    this.start = 0;
    this.at = written;
  }

  private put(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.out.set(bytes, this.at);
    this.at += bytes.length;
  }

  /** Text known to be ASCII (the writer's own punctuation and numbers), byte by byte: no call into the runtime. */
  private ascii(text: string): void {
    this.reserve(text.length);
    const out = this.out;
    let at = this.at;
    for (let i = 0; i < text.length; i++) out[at++] = text.charCodeAt(i);
    this.at = at;
  }

  /** Any text (JSON already), as UTF-8. */
  private text(text: string): void {
    this.reserve(3 * text.length);
    const out = this.out;
    let at = this.at;
    let i = 0;
    // Ids and request ids are ASCII nearly always: copied here; the rest of a text with other characters is encoded.
    for (; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code >= 0x80) break;
      out[at++] = code;
    }
    if (i < text.length) at += out.write(i === 0 ? text : text.slice(i), at, "utf8");
    this.at = at;
  }

  /** JSON.stringify's number format: shortest round-trip text, non-finite numbers as null. */
  private number(value: number): void {
    if (value >= 0 && value <= 0x7fffffff && (value | 0) === value) {
      // A small non-negative integer (ranks, popularity counts; -0 too, written "0" as JSON.stringify does): digits
      // written directly.
      this.reserve(10);
      const out = this.out;
      let v = value;
      let digits = 1;
      for (let t = v; t >= 10; t = (t / 10) | 0) digits++;
      let at = this.at + digits;
      this.at = at;
      do {
        out[--at] = 48 + (v % 10);
        v = (v / 10) | 0;
      } while (v > 0);
      return;
    }
    if (!Number.isFinite(value)) {
      this.ascii("null");
      return;
    }
    // String(value) is most of the writer's time when every score is formatted afresh.
    NUMBER_BITS[0] = value;
    const slot = Math.imul(NUMBER_WORDS[0] ^ NUMBER_WORDS[1], 0x9e3779b1) >>> NUMBER_CACHE_SHIFT;
    const at = slot * NUMBER_SLOT_BYTES;
    const bytes = this.numberBytes;
    // Neither NaN (never equal to a key, the empty slots' value) nor 0 / -0 (written above) reaches here.
    if (this.numberKeys[slot * (NUMBER_SLOT_BYTES / 8)] === value) {
      const length = bytes[at + 8];
      this.reserve(length);
      const out = this.out;
      let to = this.at;
      for (let i = at + 9; i < at + 9 + length; i++) out[to++] = bytes[i];
      this.at = to;
      return;
    }
    const text = String(value);
    if (text.length <= NUMBER_TEXT_MAX) {
      this.numberKeys[slot * (NUMBER_SLOT_BYTES / 8)] = value;
      bytes[at + 8] = text.length;
      for (let i = 0; i < text.length; i++) bytes[at + 9 + i] = text.charCodeAt(i);
    }
    this.ascii(text);
  }
}
