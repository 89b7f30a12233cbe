/**
 * The stored form of a table's rows in the SQLite store (./sqlite-store.ts): the rows of one first cluster c1 of one
 * version, or some of them, in one BLOB, a *block*, sorted by c2.
 *
 * Why blocks: SQLite's cost of writing a table is per SQL row, not per byte, and a full table is 89,700 pairs; one
 * SQL row per c1 writes the same bytes in a few hundred rows. A build writes one block per c1 of each batch it
 * commits, so a c1 may have several blocks (its *parts*); readers merge a c1's parts by c2.
 *
 * Layout: 32-bit little-endian words, then bytes.
 * - word 0: `TABLE_BLOCK_LAYOUT`; a reader refuses a block of any other layout rather than misread it.
 * - word 1: n, the rows; word 2: k, the distinct context keys of the rows.
 * - n row entries of 4 words (row i at word 3 + 4i): its c2, the end of its answers, the end of its explanation (both
 *   byte offsets into their sections, the start being the previous row's end), and its kind word: the explanation's
 *   kind (`EXPLANATION_*`, bits 0-1) and its context key's index + 1 above (0: no key, null).
 * - k words: the end of each context key's UTF-8 bytes in the keys section.
 * - the answers section: each row's answers as ./answer-blob.ts stores them (cluster indices of the store's global
 *   dictionary), rows in order. It starts on a word, as everything before it is words.
 * - the explanations section: each row's explanation bytes (the writer's encoding, or JSON text), rows in order.
 * - the keys section: the distinct context keys, UTF-8. A build's rows mostly share a key (a fusion table's are all
 *   the no-context key ""), so each block holds each key once.
 */
import { FreshrecError } from "../domain/errors.js";
import { ANSWER_BYTES } from "./answer-blob.js";
import { damagedRowsError } from "./errors.js";

/** The layout word of a block this code writes and reads. */
export const TABLE_BLOCK_LAYOUT = 1;

/** No explanation (a prompted row). */
export const EXPLANATION_NONE = 0;
/** Explanation bytes in the writer's encoding, handed back as bytes. */
export const EXPLANATION_BYTES = 1;
/** An explanation object as JSON text (a row appended with an object, or any row of a table stored before bytes). */
export const EXPLANATION_JSON = 2;
export type ExplanationKind = typeof EXPLANATION_NONE | typeof EXPLANATION_BYTES | typeof EXPLANATION_JSON;

const HEADER_BYTES = 12;
const ENTRY_BYTES = 16;

/**
 * Builds one block from rows added in increasing c2. Bytes are copied at `finish`, so the sources must stay as they
 * are until then; rows whose bytes follow each other in one source are copied in one piece.
 */
export class TableBlockWriter {
  private readonly c2: number[] = [];
  private readonly answerEnd: number[] = [];
  private readonly explanationEnd: number[] = [];
  private readonly kind: number[] = [];
  private readonly keys: string[] = [];
  private readonly keyIndex = new Map<string, number>();
  private lastKey: string | null = null;
  private lastKeyEntry = 0;
  /** Pieces to copy, three entries each: source, start, end. */
  private readonly answerPieces: (Uint8Array | number)[] = [];
  private readonly explanationPieces: (Uint8Array | number)[] = [];
  private answerBytes = 0;
  private explanationBytes = 0;
  private widest = 0;

  /** Rows added. */
  get count(): number {
    return this.c2.length;
  }

  /** The most answers a row added has. */
  get topN(): number {
    return this.widest;
  }

  /**
   * Adds a row: its answers are answers[answersFrom .. answersTo), its explanation explanation[explanationFrom ..
   * explanationTo) of `kind` (an empty range for none).
   */
  add(
    c2: number,
    answers: Uint8Array,
    answersFrom: number,
    answersTo: number,
    kind: ExplanationKind,
    explanation: Uint8Array | null,
    explanationFrom: number,
    explanationTo: number,
    contextKey: string | null,
  ): void {
    const n = this.c2.length;
    if (n > 0 && !(c2 > this.c2[n - 1])) throw new FreshrecError("INTERNAL", `tables: block rows out of order (c2 ${c2} after ${this.c2[n - 1]})`);
    if ((answersTo - answersFrom) % ANSWER_BYTES !== 0) throw new FreshrecError("INTERNAL", `tables: answers of ${answersTo - answersFrom} bytes`);
    this.c2.push(c2);
    this.answerBytes += answersTo - answersFrom;
    this.answerEnd.push(this.answerBytes);
    this.widest = Math.max(this.widest, (answersTo - answersFrom) / ANSWER_BYTES);
    addPiece(this.answerPieces, answers, answersFrom, answersTo);
    if (kind !== EXPLANATION_NONE && explanation) {
      this.explanationBytes += explanationTo - explanationFrom;
      addPiece(this.explanationPieces, explanation, explanationFrom, explanationTo);
    }
    this.explanationEnd.push(this.explanationBytes);
    this.kind.push(kind | (this.keyEntry(contextKey) << 2));
  }

  /** Index + 1 of a context key among the block's keys, 0 for none. */
  private keyEntry(key: string | null): number {
    if (key === null) return 0;
    if (key === this.lastKey) return this.lastKeyEntry;
    let index = this.keyIndex.get(key);
    if (index === undefined) {
      index = this.keys.length;
      this.keys.push(key);
      this.keyIndex.set(key, index);
    }
    this.lastKey = key;
    this.lastKeyEntry = index + 1;
    return this.lastKeyEntry;
  }

  /** The block's bytes, in a buffer of its own. */
  finish(): Buffer {
    return this.finishInto(null);
  }

  /**
   * The block's bytes written at the start of `scratch` when it is long enough (a view of it, valid until `scratch` is
   * written again), else in a buffer of its own. A store that hands each block to SQLite at once, which copies it,
   * reuses one scratch buffer for a whole build instead of allocating its every byte anew.
   */
  finishInto(scratch: Buffer | null): Buffer {
    const n = this.c2.length;
    const k = this.keys.length;
    const keyBytes = this.keys.map((key) => Buffer.from(key, "utf8"));
    const keyTotal = keyBytes.reduce((sum, b) => sum + b.length, 0);
    const answersAt = HEADER_BYTES + n * ENTRY_BYTES + k * 4;
    const size = answersAt + this.answerBytes + this.explanationBytes + keyTotal;
    const block = scratch && scratch.length >= size ? scratch.subarray(0, size) : Buffer.allocUnsafe(size);
    const words = new DataView(block.buffer, block.byteOffset, answersAt);
    words.setUint32(0, TABLE_BLOCK_LAYOUT, true);
    words.setUint32(4, n, true);
    words.setUint32(8, k, true);
    for (let i = 0, at = HEADER_BYTES; i < n; i++, at += ENTRY_BYTES) {
      words.setInt32(at, this.c2[i], true);
      words.setUint32(at + 4, this.answerEnd[i], true);
      words.setUint32(at + 8, this.explanationEnd[i], true);
      words.setUint32(at + 12, this.kind[i], true);
    }
    let keyEnd = 0;
    for (let j = 0; j < k; j++) words.setUint32(HEADER_BYTES + n * ENTRY_BYTES + 4 * j, (keyEnd += keyBytes[j].length), true);
    let at = copyPieces(this.answerPieces, block, answersAt);
    at = copyPieces(this.explanationPieces, block, at);
    for (const b of keyBytes) at += b.copy(block, at);
    return block;
  }
}

/** The SQL type of a value SQLite handed back, for messages ("TEXT" where a BLOB should be). */
export function storedType(value: unknown): string {
  if (typeof value === "string") return "TEXT";
  if (value === null) return "NULL";
  if (Buffer.isBuffer(value)) return "a BLOB";
  return typeof value === "number" || typeof value === "bigint" ? "a number" : typeof value;
}

function addPiece(pieces: (Uint8Array | number)[], source: Uint8Array, from: number, to: number): void {
  if (to === from) return;
  const last = pieces.length - 3;
  if (last >= 0 && pieces[last] === source && pieces[last + 2] === from) pieces[last + 2] = to;
  else pieces.push(source, from, to);
}

function copyPieces(pieces: (Uint8Array | number)[], target: Buffer, at: number): number {
  for (let p = 0; p < pieces.length; p += 3) {
    const source = pieces[p] as Uint8Array;
    const from = pieces[p + 1] as number;
    const to = pieces[p + 2] as number;
    target.set(source.subarray(from, to), at);
    at += to - from;
  }
  return at;
}

/** A stored block, read in place. `what` names it in errors ("t000003, c1 #4"). */
export class TableBlock {
  /** Rows in the block. */
  readonly count: number;
  private readonly answersAt: number;
  private readonly explanationsAt: number;
  private readonly keys: (string | null)[];

  constructor(
    readonly bytes: Buffer,
    private readonly what: string,
  ) {
    // A file written by hand or by another program may hold any SQL type where a block should be.
    if (!Buffer.isBuffer(bytes)) throw this.damaged(`a block stored as ${storedType(bytes)}, not a BLOB`);
    if (bytes.length < HEADER_BYTES) throw this.damaged(`a block of ${bytes.length} bytes`);
    const layout = bytes.readUInt32LE(0);
    if (layout !== TABLE_BLOCK_LAYOUT) throw new FreshrecError("INTERNAL", `tables: the stored rows of ${what} have block layout ${layout}, this freshrec reads ${TABLE_BLOCK_LAYOUT}`);
    const n = bytes.readUInt32LE(4);
    const k = bytes.readUInt32LE(8);
    const answersAt = HEADER_BYTES + n * ENTRY_BYTES + k * 4;
    if (answersAt > bytes.length) throw this.damaged(`${n} rows and ${k} keys do not fit in ${bytes.length} bytes`);
    let answerEnd = 0;
    let explanationEnd = 0;
    let c2 = -1;
    for (let i = 0, at = HEADER_BYTES; i < n; i++, at += ENTRY_BYTES) {
      const next = bytes.readInt32LE(at);
      const a = bytes.readUInt32LE(at + 4);
      const e = bytes.readUInt32LE(at + 8);
      const kind = bytes.readUInt32LE(at + 12);
      if (!(next > c2)) throw this.damaged(`row ${i} is out of c2 order`);
      if (a < answerEnd || (a - answerEnd) % ANSWER_BYTES !== 0 || e < explanationEnd) throw this.damaged(`row ${i} has bad ends`);
      if ((kind & 3) > EXPLANATION_JSON || kind >>> 2 > k) throw this.damaged(`row ${i} has kind word ${kind}`);
      c2 = next;
      answerEnd = a;
      explanationEnd = e;
    }
    let keyEnd = 0;
    const keyEnds: number[] = [];
    for (let j = 0; j < k; j++) {
      const end = bytes.readUInt32LE(HEADER_BYTES + n * ENTRY_BYTES + 4 * j);
      if (end < keyEnd) throw this.damaged(`key ${j} has a bad end`);
      keyEnds.push((keyEnd = end));
    }
    if (answersAt + answerEnd + explanationEnd + keyEnd !== bytes.length) throw this.damaged(`its sections do not add up to ${bytes.length} bytes`);
    this.count = n;
    this.answersAt = answersAt;
    this.explanationsAt = answersAt + answerEnd;
    const keysAt = this.explanationsAt + explanationEnd;
    this.keys = [null, ...keyEnds.map((end, j) => bytes.toString("utf8", keysAt + (j === 0 ? 0 : keyEnds[j - 1]), keysAt + end))];
  }

  /** The error for damage found in the block, naming it. */
  damaged(why: string): FreshrecError {
    return damagedRowsError(this.what, why);
  }

  c2(i: number): number {
    return this.bytes.readInt32LE(HEADER_BYTES + i * ENTRY_BYTES);
  }

  /** Where row i's answers are in `bytes`: [answersStart(i), answersEnd(i)). */
  answersStart(i: number): number {
    return this.answersAt + (i === 0 ? 0 : this.bytes.readUInt32LE(HEADER_BYTES + (i - 1) * ENTRY_BYTES + 4));
  }

  answersEnd(i: number): number {
    return this.answersAt + this.bytes.readUInt32LE(HEADER_BYTES + i * ENTRY_BYTES + 4);
  }

  /** Where row i's explanation is in `bytes`: [explanationStart(i), explanationEnd(i)). */
  explanationStart(i: number): number {
    return this.explanationsAt + (i === 0 ? 0 : this.bytes.readUInt32LE(HEADER_BYTES + (i - 1) * ENTRY_BYTES + 8));
  }

  explanationEnd(i: number): number {
    return this.explanationsAt + this.bytes.readUInt32LE(HEADER_BYTES + i * ENTRY_BYTES + 8);
  }

  explanationKind(i: number): ExplanationKind {
    return (this.bytes.readUInt32LE(HEADER_BYTES + i * ENTRY_BYTES + 12) & 3) as ExplanationKind;
  }

  /**
   * Row i's explanation as written: bytes as bytes (a copy), JSON text as the object, none as undefined. `row` names
   * the row in errors ("row (c003, c007)", when the reader knows its pair).
   */
  explanation(i: number, row: () => string = () => `row c2 #${this.c2(i)}`): Readonly<Record<string, unknown>> | Uint8Array | undefined {
    const kind = this.explanationKind(i);
    if (kind === EXPLANATION_NONE) return undefined;
    if (kind === EXPLANATION_JSON) {
      try {
        return JSON.parse(this.bytes.toString("utf8", this.explanationStart(i), this.explanationEnd(i)));
      } catch (error) {
        throw this.damaged(`${row()} has an explanation that is not JSON: ${(error as Error).message}`);
      }
    }
    return Buffer.from(this.bytes.subarray(this.explanationStart(i), this.explanationEnd(i)));
  }

  contextKey(i: number): string | null {
    return this.keys[this.bytes.readUInt32LE(HEADER_BYTES + i * ENTRY_BYTES + 12) >>> 2];
  }

  /** The row of `c2`, or -1. */
  find(c2: number): number {
    let lo = 0;
    let hi = this.count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const at = this.c2(mid);
      if (at === c2) return mid;
      if (at < c2) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Adds row i to `writer` as it is. */
  copyRowTo(i: number, writer: TableBlockWriter): void {
    writer.add(
      this.c2(i),
      this.bytes,
      this.answersStart(i),
      this.answersEnd(i),
      this.explanationKind(i),
      this.bytes,
      this.explanationStart(i),
      this.explanationEnd(i),
      this.contextKey(i),
    );
  }
}

/**
 * The rows of one c1's parts in c2 order: row j is row `row[j]` of part `part[j]`. A c2 in two parts is a damaged
 * table (a build refuses a pair written twice), named by `what`.
 */
export function mergeBlockParts(parts: readonly TableBlock[], what: string): { readonly count: number; readonly part: Int32Array; readonly row: Int32Array } {
  const count = parts.reduce((sum, p) => sum + p.count, 0);
  const part = new Int32Array(count);
  const row = new Int32Array(count);
  if (parts.length === 1) {
    for (let j = 0; j < count; j++) row[j] = j;
    return { count, part, row };
  }
  // A few parts per c1 (one per batch that held it): picking the smallest head each time is enough.
  const next = new Int32Array(parts.length);
  for (let j = 0; j < count; j++) {
    let best = -1;
    let bestC2 = 0;
    for (let p = 0; p < parts.length; p++) {
      if (next[p] >= parts[p].count) continue;
      const c2 = parts[p].c2(next[p]);
      if (best >= 0 && c2 === bestC2) throw new FreshrecError("INTERNAL", `tables: the stored rows of ${what} hold c2 #${c2} twice`);
      if (best < 0 || c2 < bestC2) {
        best = p;
        bestC2 = c2;
      }
    }
    part[j] = best;
    row[j] = next[best]++;
  }
  return { count, part, row };
}
