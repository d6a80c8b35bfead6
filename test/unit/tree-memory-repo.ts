/**
 * A small in-memory implementation of BlobWriter/BlobReader (our own interface from src/repo/api.ts) for the
 * tree unit tests, until they can run through the real Repository (see test/integration/tree-repo.test.ts).
 * Like a worker-thread writer, it takes ownership of the buffer it is given (transfers its ArrayBuffer).
 */
import { createHmac } from 'node:crypto';
import { IntegrityError, NotFoundError } from '../../src/core/index.ts';
import type { BlobId, BlobReader, BlobType, BlobWriter, SaveResult } from '../../src/repo/api.ts';

export class MemoryBlobs implements BlobWriter, BlobReader {
  readonly blobs = new Map<BlobId, { type: BlobType; data: Buffer }>();
  saves = 0;
  loads = 0;
  savedBytes = 0;

  private id(data: Uint8Array): BlobId {
    return createHmac('sha256', 'tree-test-key').update(data).digest('hex');
  }

  async saveBlob(type: BlobType, plaintext: Buffer): Promise<SaveResult> {
    this.saves++;
    const id = this.id(plaintext);
    // Take the memory away from the caller, as postMessage with a transfer list would.
    // (Views of a larger buffer, such as Node's pooled small buffers, are copied.)
    let data: Buffer;
    if (plaintext.byteOffset === 0 && plaintext.byteLength === plaintext.buffer.byteLength) {
      const moved = structuredClone(plaintext.buffer as ArrayBuffer, {
        transfer: [plaintext.buffer as ArrayBuffer],
      });
      data = Buffer.from(moved);
    } else data = Buffer.from(plaintext);
    await new Promise((resolve) => setImmediate(resolve));
    if (this.blobs.has(id)) return { id, stored: false, storedBytes: 0 };
    this.blobs.set(id, { type, data: Buffer.from(data) });
    this.savedBytes += data.length;
    return { id, stored: true, storedBytes: data.length };
  }

  hasBlob(id: BlobId): boolean {
    return this.blobs.has(id);
  }

  async loadBlob(id: BlobId): Promise<Buffer> {
    this.loads++;
    await new Promise((resolve) => setImmediate(resolve));
    const b = this.blobs.get(id);
    if (!b) throw new NotFoundError(`blob ${id} not found`);
    if (this.id(b.data) !== id) throw new IntegrityError(`blob ${id} does not match its hash`);
    return Buffer.from(b.data);
  }

  blobSize(id: BlobId): number | undefined {
    return this.blobs.get(id)?.data.length;
  }
}
