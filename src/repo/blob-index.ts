import { writeIndexEntry } from './format.ts';

/**
 * Compact in-memory index: blob id → (pack, offset, length, raw length, type, compression).
 * Parallel typed arrays plus an open-addressing hash table keyed by the id's first 4 bytes:
 * ~56 bytes per blob (32 id + 17 fields + 8 table), so 1M blobs take ~56 MiB instead of ~250 MiB for a Map.
 */
export interface BlobEntry {
  pack: number;
  offset: number;
  length: number;
  rawLength: number;
  type: number;
  comp: number;
}

export class BlobIndex {
  private cap = 0;
  private n = 0;
  private ids = new Uint8Array(0);
  private packs = new Uint32Array(0);
  private offsets = new Uint32Array(0);
  private lengths = new Uint32Array(0);
  private raws = new Uint32Array(0);
  private flags = new Uint8Array(0);
  /** slot → entry + 1 (0 = empty). */
  private table = new Uint32Array(0);
  private mask = 0;
  readonly packIds: string[] = [];
  /** numberOf's id bytes. */
  private readonly scratch = Buffer.alloc(32);
  private readonly packNo = new Map<string, number>();

  constructor(initial = 1024) {
    this.grow(initial);
  }

  get size(): number {
    return this.n;
  }

  packNumber(packId: string): number {
    let p = this.packNo.get(packId);
    if (p === undefined) {
      p = this.packIds.length;
      this.packIds.push(packId);
      this.packNo.set(packId, p);
    }
    return p;
  }

  private grow(cap: number): void {
    const ids = new Uint8Array(cap * 32);
    ids.set(this.ids.subarray(0, this.n * 32));
    const cp = <T extends Uint32Array | Uint8Array>(a: T, b: T): T => {
      b.set(a.subarray(0, this.n));
      return b;
    };
    this.packs = cp(this.packs, new Uint32Array(cap));
    this.offsets = cp(this.offsets, new Uint32Array(cap));
    this.lengths = cp(this.lengths, new Uint32Array(cap));
    this.raws = cp(this.raws, new Uint32Array(cap));
    this.flags = cp(this.flags, new Uint8Array(cap));
    this.ids = ids;
    this.cap = cap;
    let tsize = 1;
    while (tsize < cap * 2) tsize <<= 1;
    this.table = new Uint32Array(tsize);
    this.mask = tsize - 1;
    for (let i = 0; i < this.n; i++) this.place(i);
  }

  private hashAt(buf: Uint8Array, off: number): number {
    return (buf[off]! | (buf[off + 1]! << 8) | (buf[off + 2]! << 16) | (buf[off + 3]! << 24)) >>> 0;
  }

  private place(i: number): void {
    let s = this.hashAt(this.ids, i * 32) & this.mask;
    while (this.table[s] !== 0) s = (s + 1) & this.mask;
    this.table[s] = i + 1;
  }

  /** The entry of the 32-byte id at `off` of `id`, or -1. */
  private find(id: Uint8Array, off = 0): number {
    let s = this.hashAt(id, off) & this.mask;
    for (;;) {
      const e = this.table[s]!;
      if (e === 0) return -1;
      const i = e - 1;
      const base = i * 32;
      let eq = true;
      for (let k = 0; k < 32; k++) {
        if (this.ids[base + k] !== id[off + k]) {
          eq = false;
          break;
        }
      }
      if (eq) return i;
      s = (s + 1) & this.mask;
    }
  }

  /** Room for `n` entries in all, so that adding up to that many allocates nothing more. */
  reserve(n: number): void {
    if (n > this.cap) this.grow(n);
  }

  has(id: Uint8Array): boolean {
    return this.find(id) >= 0;
  }

  get(id: Uint8Array): BlobEntry | undefined {
    const i = this.find(id);
    if (i < 0) return undefined;
    const f = this.flags[i]!;
    return {
      pack: this.packs[i]!,
      offset: this.offsets[i]!,
      length: this.lengths[i]!,
      rawLength: this.raws[i]!,
      type: f & 1,
      comp: f >> 1,
    };
  }

  /** Adds the entry unless the id is already present (the first location wins). Returns whether it was added. */
  add(id: Uint8Array, e: BlobEntry): boolean {
    if (this.find(id) >= 0) return false;
    this.push(id, 0, e.pack, e.offset, e.length, e.rawLength, (e.type & 1) | (e.comp << 1));
    return true;
  }

  /**
   * Adds the entry encoded at `at` of `buf` as in an index object (type u8, comp u8, id[32], offset, length,
   * rawLength u32le; format.ts) for pack number `pack`, unless its id is already present. No object per entry:
   * loading the index of 1M blobs through objects made ~370 MB of garbage.
   */
  addEncoded(buf: Buffer, at: number, pack: number): boolean {
    if (this.find(buf, at + 2) >= 0) return false;
    const flags = (buf[at]! & 1) | (buf[at + 1]! << 1);
    this.push(
      buf,
      at + 2,
      pack,
      buf.readUInt32LE(at + 34),
      buf.readUInt32LE(at + 38),
      buf.readUInt32LE(at + 42),
      flags,
    );
    return true;
  }

  private push(
    id: Uint8Array,
    idAt: number,
    pack: number,
    offset: number,
    length: number,
    rawLength: number,
    flags: number,
  ): void {
    // By half: just after growing, a doubling leaves half of the arrays unused (~57 MB at 1M blobs).
    if (this.n >= this.cap) this.grow(Math.ceil(this.cap * 1.5));
    const i = this.n++;
    this.ids.set(id.subarray(idAt, idAt + 32), i * 32);
    this.packs[i] = pack;
    this.offsets[i] = offset;
    this.lengths[i] = length;
    this.raws[i] = rawLength;
    this.flags[i] = flags;
    this.place(i);
  }

  /** Entry number (0 ≤ i < size, in the order added) of the blob with this hex id, or -1. */
  numberOf(hexId: string): number {
    if (hexId.length !== 64 || this.scratch.write(hexId, 0, 32, 'hex') !== 32) return -1;
    return this.find(this.scratch);
  }

  /** Pack number of entry i. */
  packAt(i: number): number {
    return this.packs[i]!;
  }

  /** Stored (sealed) length of entry i. */
  lengthAt(i: number): number {
    return this.lengths[i]!;
  }

  /** Entry i encoded as in an index object (the inverse of addEncoded), at `at` of `out`. */
  encodeAt(i: number, out: Buffer, at: number): void {
    const f = this.flags[i]!;
    writeIndexEntry(
      out,
      at,
      f & 1,
      f >> 1,
      this.ids,
      i * 32,
      this.offsets[i]!,
      this.lengths[i]!,
      this.raws[i]!,
    );
  }

  /** Hex id, type and raw length of entry i. */
  blobAt(i: number): { id: string; type: number; rawLength: number } {
    return {
      id: Buffer.from(this.ids.buffer, this.ids.byteOffset + i * 32, 32).toString('hex'),
      type: this.flags[i]! & 1,
      rawLength: this.raws[i]!,
    };
  }

  *entries(): Generator<[Uint8Array, BlobEntry]> {
    for (let i = 0; i < this.n; i++) {
      const f = this.flags[i]!;
      yield [
        this.ids.subarray(i * 32, i * 32 + 32),
        {
          pack: this.packs[i]!,
          offset: this.offsets[i]!,
          length: this.lengths[i]!,
          rawLength: this.raws[i]!,
          type: f & 1,
          comp: f >> 1,
        },
      ];
    }
  }
}
