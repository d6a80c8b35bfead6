/**
 * Page-aligned shared memory: restore plaintexts and backup packs.
 *
 * The crypto workers write decrypted (and decompressed) runs straight into slots of one shared memory, and a
 * restore writes them out from there; a backup assembles its packs in slots of another, which the local
 * store writes with O_DIRECT. The memory comes from `WebAssembly.Memory` (shared where workers write into
 * it, plain for packs): V8 maps it with mmap, so its base is page-aligned, which a `new ArrayBuffer`'s is
 * not. Views at 4 KiB offsets of it can therefore be written with O_DIRECT (see `directWritable`), which
 * moves the bytes to the device without copying them into the page cache (on this machine, 2 GiB: ~0.1 s
 * of CPU and ~0.8 s instead of ~1 s of CPU and a ~1 s fsync at the end).
 */

// The one WebAssembly API used here (the project's type libraries do not declare the WebAssembly global).
declare const WebAssembly: {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => {
    buffer: SharedArrayBuffer | ArrayBuffer;
  };
};

/** Alignment that O_DIRECT needs of the buffer address, file offset and length (logical block size ≤ 4 KiB). */
export const DIRECT_ALIGN = 4096;
const WASM_PAGE = 64 * 1024;

/** Buffers whose base address is page-aligned (made by `RunArena`). */
const alignedBases = new WeakSet<ArrayBufferLike>();

export class RunArena<B extends ArrayBufferLike = SharedArrayBuffer> {
  readonly buffer: B;
  readonly slotBytes: number;
  private readonly free: number[] = [];

  /**
   * `shared: false` makes a plain ArrayBuffer for memory only this thread uses: V8 copies into shared memory
   * with relaxed atomic moves, ~6.7 GB/s here against ~34 GB/s into a plain buffer.
   */
  constructor(slots: number, slotBytes: number, shared = true) {
    if (slotBytes % WASM_PAGE !== 0)
      throw new RangeError(`slot size ${slotBytes} is not a multiple of 64 KiB`);
    const pages = (slots * slotBytes) / WASM_PAGE;
    // Pages are committed when first touched: an arena costs address space until a restore uses it.
    this.buffer = new WebAssembly.Memory({ initial: pages, maximum: pages, shared }).buffer as B;
    alignedBases.add(this.buffer);
    this.slotBytes = slotBytes;
    for (let i = slots - 1; i >= 0; i--) this.free.push(i * slotBytes);
  }

  /** Offset of a free slot, or undefined when all are in use (the caller then allocates its own buffer). */
  take(): number | undefined {
    return this.free.pop();
  }

  give(offset: number): void {
    this.free.push(offset);
  }
}

/** True when `buf` may be written with O_DIRECT as it is: in an aligned arena, aligned offset and length. */
export function directWritable(buf: Uint8Array): boolean {
  return directSpan(buf) === buf.length;
}

/**
 * Bytes to write with O_DIRECT to put all of `buf` in a file at offset 0: its length rounded up to
 * DIRECT_ALIGN, when `buf` starts at an aligned offset of an aligned arena that holds the rounded length (the
 * bytes past `buf`'s end are written too and the caller truncates the file back). Undefined otherwise.
 */
export function directSpan(buf: Uint8Array): number | undefined {
  if (!alignedBases.has(buf.buffer)) return undefined;
  if (buf.byteOffset % DIRECT_ALIGN !== 0 || buf.length === 0) return undefined;
  const span = Math.ceil(buf.length / DIRECT_ALIGN) * DIRECT_ALIGN;
  return buf.byteOffset + span <= buf.buffer.byteLength ? span : undefined;
}
