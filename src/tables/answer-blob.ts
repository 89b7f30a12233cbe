/**
 * The stored form of a row's answers: one BLOB of 8 bytes per answer, rank order, each a little-endian int32
 * cluster index (into the store's global cluster dictionary) followed by a little-endian float32 score.
 *
 * Why this form: a top-10 row is 80 bytes instead of ~300 bytes of JSON, decoding is two reads per answer with
 * no parsing, and rows copy between table versions as opaque values in SQL. Scores are 32-bit floats: ample for
 * probabilities, and exactly what the serving lookup (Float32Array) holds, so a store read and a lookup read of the
 * same row agree bit for bit.
 */
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
