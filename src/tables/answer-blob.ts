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

/** Decodes into caller-owned arrays at `offset`; returns the number of answers. */
export function decodeAnswersInto(blob: Buffer, ids: Int32Array, scores: Float32Array, offset: number): number {
  const n = blob.length / ANSWER_BYTES;
  for (let k = 0; k < n; k++) {
    ids[offset + k] = blob.readInt32LE(k * ANSWER_BYTES);
    scores[offset + k] = blob.readFloatLE(k * ANSWER_BYTES + 4);
  }
  return n;
}

/**
 * Checks rows [from, to) of rows in stored form as `append` checks row objects, with the same messages: a row never
 * repeats its cluster nor answers one of its own, scores are finite, indices lie inside the vocabulary.
 */
export function checkPackedRows(rows: PackedBuildRows, from: number, to: number): void {
  const { clusters, c1, c2, answers, answerEnd } = rows;
  const name = (i: number) => (i >= 0 && i < clusters.length ? clusters[i] : `#${i}`);
  for (let r = from; r < to; r++) {
    const a = c1[r];
    const b = c2[r];
    if (!(a >= 0 && a < clusters.length && b >= 0 && b < clusters.length)) {
      throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) names a cluster outside its vocabulary`);
    }
    if (a === b) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) repeats its cluster`);
    const start = r === 0 ? 0 : answerEnd[r - 1];
    if ((answerEnd[r] - start) % ANSWER_BYTES !== 0 || answerEnd[r] < start) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has answers of ${answerEnd[r] - start} bytes`);
    for (let at = start; at < answerEnd[r]; at += ANSWER_BYTES) {
      const n = answers.readInt32LE(at);
      if (!(n >= 0 && n < clusters.length)) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) answers a cluster outside its vocabulary`);
      if (n === a || n === b) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) answers ${name(n)}, a cluster of its own history`);
      const score = answers.readFloatLE(at + 4);
      if (!Number.isFinite(score)) throw new FreshrecError("BAD_INPUT", `tables: row (${name(a)}, ${name(b)}) has score ${score} for ${name(n)}`);
    }
  }
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
  for (let r = from; r < to; r++) {
    for (let at = r === 0 ? 0 : rows.answerEnd[r - 1]; at < rows.answerEnd[r]; at += ANSWER_BYTES) meet(rows.answers.readInt32LE(at));
    meet(rows.c1[r]);
    meet(rows.c2[r]);
  }
  return found;
}

/** Rewrites the answers' cluster indices of rows [from, to) in place from the vocabulary's to the dictionary's (`dictionary[i]`). */
export function remapPackedAnswers(rows: PackedBuildRows, from: number, to: number, dictionary: Int32Array): void {
  const end = to === 0 ? 0 : rows.answerEnd[to - 1];
  for (let at = from === 0 ? 0 : rows.answerEnd[from - 1]; at < end; at += ANSWER_BYTES) rows.answers.writeInt32LE(dictionary[rows.answers.readInt32LE(at)], at);
}
