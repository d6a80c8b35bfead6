/**
 * Content-defined chunking for directory trees: FastCDC (gear rolling hash, normalized chunking).
 *
 * The cut points depend only on the content and on the parameters below, so an insertion in the middle of a
 * file moves at most one or two boundaries and the rest of the chunks deduplicate. The parameters are recorded
 * in the root tree blob for information; a reader needs none of them (a file is the concatenation of its chunks).
 */
import { createHash } from 'node:crypto';
import { InputError } from '../../core/base.ts';

export interface ChunkerParams {
  algorithm: 'fastcdc-gear32';
  minSize: number;
  avgSize: number;
  maxSize: number;
  /** Normalization level: mask bits added before `avgSize` and removed after it. */
  normalization: number;
  /** The gear table is derived from this seed (SHA-256 in counter mode). */
  seed: string;
}

export const DEFAULT_CHUNKER_PARAMS: ChunkerParams = Object.freeze({
  algorithm: 'fastcdc-gear32',
  minSize: 512 * 1024,
  avgSize: 1024 * 1024,
  maxSize: 8 * 1024 * 1024,
  normalization: 2,
  seed: 'tern-fastcdc-v1',
});

function gearTable(seed: string): Int32Array {
  const table = new Int32Array(256);
  // 8 entries per SHA-256 output.
  for (let block = 0; block < 32; block++) {
    const digest = createHash('sha256').update(`${seed}:${block}`).digest();
    for (let j = 0; j < 8; j++) table[block * 8 + j] = digest.readInt32LE(j * 4);
  }
  return table;
}

/**
 * A mask of `bits` ones ending at bit 30: in a shift-left gear hash the high bits depend on the most bytes
 * (bit k on the last k+1). Bit 31 stays out so that `mask << 1` loses nothing (two bytes per loop turn).
 */
function highBitsMask(bits: number): number {
  const b = Math.max(1, Math.min(30, bits));
  return (((1 << b) - 1) << (31 - b)) | 0;
}

export class FastCdc {
  readonly params: ChunkerParams;
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  private readonly gear: Int32Array;
  /** gear[x] << 1: lets the loop add two bytes per turn and still test every position. */
  private readonly gearShifted: Int32Array;
  private readonly maskS: number;
  private readonly maskL: number;

  constructor(params: Partial<ChunkerParams> = {}) {
    const p: ChunkerParams = { ...DEFAULT_CHUNKER_PARAMS, ...params };
    if (p.algorithm !== 'fastcdc-gear32')
      throw new InputError(`unknown chunker algorithm ${String(p.algorithm)}`);
    if (!(p.minSize >= 64 && p.minSize < p.avgSize && p.avgSize < p.maxSize && p.maxSize <= 2 ** 30))
      throw new InputError(`invalid chunk sizes min ${p.minSize} avg ${p.avgSize} max ${p.maxSize}`);
    if (!Number.isInteger(p.normalization) || p.normalization < 0 || p.normalization > 4)
      throw new InputError(`invalid chunker normalization ${p.normalization}`);
    this.params = Object.freeze(p);
    this.minSize = p.minSize;
    this.avgSize = p.avgSize;
    this.maxSize = p.maxSize;
    this.gear = gearTable(p.seed);
    this.gearShifted = this.gear.map((g) => g << 1);
    const bits = Math.round(Math.log2(p.avgSize));
    this.maskS = highBitsMask(bits + p.normalization);
    this.maskL = highBitsMask(bits - p.normalization);
  }

  /**
   * Length of the next chunk of `data[start, end)`. The caller passes at least `maxSize` bytes unless the
   * input ends at `end`; the result is in [1, min(end - start, maxSize)].
   */
  cut(data: Uint8Array, start: number, end: number): number {
    let n = end - start;
    if (n <= this.minSize) return n;
    if (n > this.maxSize) n = this.maxSize;
    const normal = n < this.avgSize ? n : this.avgSize;
    const gear = this.gear;
    const gearShifted = this.gearShifted;
    const maskS = this.maskS;
    const maskL = this.maskL;
    const maskS2 = maskS << 1;
    const maskL2 = maskL << 1;
    // The first minSize bytes are never a cut point, so they are not hashed at all.
    let i = start + this.minSize;
    const stop1 = start + normal;
    const stop2 = start + n;
    let h = 0;
    // Two bytes per turn: after the first byte the register holds 2·hash, tested against mask << 1.
    for (; i + 1 < stop1; i += 2) {
      h = ((h << 2) + gearShifted[data[i]!]!) | 0;
      if ((h & maskS2) === 0) return i - start + 1;
      h = (h + gear[data[i + 1]!]!) | 0;
      if ((h & maskS) === 0) return i - start + 2;
    }
    for (; i < stop1; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & maskS) === 0) return i - start + 1;
    }
    for (; i + 1 < stop2; i += 2) {
      h = ((h << 2) + gearShifted[data[i]!]!) | 0;
      if ((h & maskL2) === 0) return i - start + 1;
      h = (h + gear[data[i + 1]!]!) | 0;
      if ((h & maskL) === 0) return i - start + 2;
    }
    for (; i < stop2; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & maskL) === 0) return i - start + 1;
    }
    return n;
  }

  /** All chunk boundaries of a complete buffer (convenience for tests and small inputs). */
  *chunks(data: Uint8Array): Generator<Uint8Array> {
    let pos = 0;
    while (pos < data.length) {
      const len = this.cut(data, pos, data.length);
      yield data.subarray(pos, pos + len);
      pos += len;
    }
  }
}

/** Chunks of one complete buffer with the given (default) parameters. */
export function cdcChunks(data: Uint8Array, params?: Partial<ChunkerParams>): Uint8Array[] {
  return [...new FastCdc(params).chunks(data)];
}
