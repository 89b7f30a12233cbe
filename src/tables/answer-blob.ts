/**
 * The stored form of a row's answers: one BLOB of 8 bytes per answer, rank order, each a little-endian int32
 * cluster index (into the store's global cluster dictionary) followed by a little-endian float32 score.
 *
 * Why this form: a top-10 row is 80 bytes instead of ~300 bytes of JSON, decoding is two reads per answer with
 * no parsing, and rows copy between table versions as opaque values in SQL. Scores are 32-bit floats: ample for
 * probabilities, and exactly what the serving lookup (Float32Array) holds, so a store read and a lookup read of the
 * same row agree bit for bit.
 */
import { FreshrecError } from "../domain/errors.js";
import type { PackedBuildRows } from "./contract.js";

export const ANSWER_BYTES = 8;

export function encodeAnswers(ids: ArrayLike<number>, scores: ArrayLike<number>): Buffer {
  const n = ids.length;
  const blob = Buffer.allocUnsafe(n * ANSWER_BYTES);
  for (let k = 0; k < n; k++) {
    blob.writeInt32LE(ids[k], k * ANSWER_BYTES);
    blob.writeFloatLE(scores[k], k * ANSWER_BYTES + 4);
  }
  return blob;
}

export function answerCount(blob: Uint8Array): number {
  return blob.length / ANSWER_BYTES;
}

/**
 * Decodes the answers in blob[from .. to) (the whole blob by default; a row's answers inside a larger stored block,
 * ./table-block.ts) into caller-owned arrays at `offset`; returns the number of answers.
 */
export function decodeAnswersInto(blob: Buffer, ids: Int32Array, scores: Float32Array, offset: number, from = 0, to = blob.length): number {
  const n = (to - from) / ANSWER_BYTES;
  for (let k = 0; k < n; k++) {
    ids[offset + k] = blob.readInt32LE(from + k * ANSWER_BYTES);
    scores[offset + k] = blob.readFloatLE(from + k * ANSWER_BYTES + 4);
  }
  return n;
}

/** Whether this platform's typed arrays are little-endian, the stored order of answers and explanations. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * A buffer of 32-bit fields read and written through typed arrays in the platform's order (a Buffer or DataView
 * call per field costs more than the work done with it); `toLittleEndian` puts them in the stored order. Every field
 * of the stored answers and explanations is 32 bits wide, so one swap per word is the conversion.
 */
export class Words {
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly f32: Float32Array;

  constructor(private readonly bytes: Buffer) {
    if (bytes.byteOffset % 4 !== 0 || bytes.byteLength % 4 !== 0) throw new FreshrecError("INTERNAL", "tables: a buffer of words that is not word-aligned");
    const words = bytes.byteLength / 4;
    this.u32 = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
    this.i32 = new Int32Array(bytes.buffer, bytes.byteOffset, words);
    this.f32 = new Float32Array(bytes.buffer, bytes.byteOffset, words);
  }

  toLittleEndian(): void {
    if (!LITTLE_ENDIAN) this.bytes.swap32();
  }

  /**
   * Runs `work` on the words of little-endian `bytes` (stored answers or explanations) in the platform's order, and
   * leaves what it wrote (`writes`) in `bytes` in the stored order. Bytes that do not start on a word are worked on
   * in an aligned copy; a last partial word is left out.
   */
  static ofStored<T>(bytes: Buffer, writes: boolean, work: (words: Words) => T): T {
    const whole = bytes.subarray(0, bytes.byteLength - (bytes.byteLength % 4));
    const copy = whole.byteOffset % 4 === 0 ? null : new Uint8Array(whole);
    const aligned = copy ? Buffer.from(copy.buffer, 0, copy.byteLength) : whole;
    const words = new Words(aligned);
    words.toLittleEndian();
    try {
      return work(words);
    } finally {
      words.toLittleEndian();
      if (copy && writes) aligned.copy(whole);
    }
  }
}

/**
 * Runs `work` on the answers of rows [from, to) as words (`Words.ofStored`); `word(at)` is the word of the answers'
 * byte offset `at` (an `answerEnd` value). The words reach as far as any of the rows' ends (within the bytes there
 * are), so rows whose ends go back are read as far as the check that names them.
 */
function answerWordsOf<T>(rows: PackedBuildRows, from: number, to: number, work: (words: Words, word: (at: number) => number) => T): T {
  const first = from === 0 ? 0 : rows.answerEnd[from - 1];
  let last = first;
  for (let r = from; r < to; r++) last = Math.max(last, rows.answerEnd[r]);
  return Words.ofStored(rows.answers.subarray(first, Math.min(last, rows.answers.length)), false, (words) => work(words, (at) => (at - first) >> 2));
}

/**
 * Checks rows [from, to) of rows in stored form as `append` checks row objects, with the same messages: a row never
 * repeats its cluster nor answers one of its own, scores are finite, indices lie inside the vocabulary; and each row's
 * answers and explanation lie inside the bytes given.
 */
export function checkPackedRows(rows: PackedBuildRows, from: number, to: number): void {
  const { clusters, c1, c2, answerEnd, explanationEnd } = rows;
  const name = (i: number) => (i >= 0 && i < clusters.length ? clusters[i] : `#${i}`);
  answerWordsOf(rows, from, to, ({ i32, f32 }, word) => {
    for (let r = from; r < to; r++) {
      const a = c1[r];
      const b = c2[r];
      if (!(a >= 0 && a < clusters.length && b >= 0 && b < clusters.length)) {
        throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) names a cluster outside its vocabulary`);
      }
      if (a === b) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) repeats its cluster`);
      const start = r === 0 ? 0 : answerEnd[r - 1];
      if ((answerEnd[r] - start) % ANSWER_BYTES !== 0 || answerEnd[r] < start) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has answers of ${answerEnd[r] - start} bytes`);
      if (answerEnd[r] > rows.answers.length) {
        throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has answers up to byte ${answerEnd[r]} of ${rows.answers.length}`);
      }
      const explanationStart = r === 0 ? 0 : explanationEnd[r - 1];
      if (explanationEnd[r] < explanationStart) {
        throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has an explanation of ${explanationEnd[r] - explanationStart} bytes`);
      }
      if (explanationEnd[r] > rows.explanation.length) {
        throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has an explanation up to byte ${explanationEnd[r]} of ${rows.explanation.length}`);
      }
      for (let w = word(start), end = word(answerEnd[r]); w < end; w += 2) {
        const n = i32[w];
        if (!(n >= 0 && n < clusters.length)) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) answers a cluster outside its vocabulary`);
        if (n === a || n === b) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) answers ${name(n)}, a cluster of its own history`);
        const score = f32[w + 1];
        if (!Number.isFinite(score)) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has score ${score} for ${name(n)}`);
      }
    }
  });
}

/**
 * The vocabulary indices rows [from, to) use that `seen` does not hold yet, in the order a store meeting the rows one
 * by one (each row's answers, then c1 and c2) adds clusters to its dictionary; marks them seen. A packed build thus
 * numbers new clusters as a build of the same rows as objects does.
 */
export function newClustersInOrder(rows: PackedBuildRows, from: number, to: number, seen: Uint8Array): number[] {
  const found: number[] = [];
  const meet = (i: number) => {
    if (!seen[i]) {
      seen[i] = 1;
      found.push(i);
    }
  };
  answerWordsOf(rows, from, to, ({ i32 }, word) => {
    for (let r = from; r < to; r++) {
      for (let w = word(r === 0 ? 0 : rows.answerEnd[r - 1]), end = word(rows.answerEnd[r]); w < end; w += 2) meet(i32[w]);
      meet(rows.c1[r]);
      meet(rows.c2[r]);
    }
  });
  return found;
}

/**
 * The answers of rows [from, to), checked by `checkPackedRows`, with their cluster indices rewritten from the
 * vocabulary's to the dictionary's (`dictionary[i]`) in a copy: the caller's rows stay as given, whether the rows are
 * then stored or refused. Byte b of the copy is byte b + answerEnd[from - 1] (0 for the first row) of `rows.answers`.
 * The copy is written at the start of `scratch` when it is long enough (a view of it, valid until `scratch` is written
 * again), else in a buffer of its own.
 */
export function remappedPackedAnswers(rows: PackedBuildRows, from: number, to: number, dictionary: Int32Array, scratch: Buffer | null): Buffer {
  const first = from === 0 ? 0 : rows.answerEnd[from - 1];
  const size = (to === from ? first : rows.answerEnd[to - 1]) - first;
  // Memory of its own (never a slice of Node's pool), so the copy starts on a word.
  const copy = scratch && scratch.length >= size ? scratch.subarray(0, size) : Buffer.allocUnsafeSlow(size);
  rows.answers.copy(copy, 0, first, first + size);
  Words.ofStored(copy, true, ({ i32 }) => {
    for (let w = 0; w < i32.length; w += 2) i32[w] = dictionary[i32[w]];
  });
  return copy;
}
