/** Fast all-zero tests (memcmp against a shared zero buffer). */
const ZERO = Buffer.alloc(1024 * 1024);

export function isAllZero(buf: Uint8Array, start = 0, end = buf.length): boolean {
  if (end <= start) return true;
  // Most data fails on the first or last byte: skip the comparison for it.
  if (buf[start] !== 0 || buf[end - 1] !== 0) return false;
  for (let pos = start; pos < end; pos += ZERO.length) {
    const len = Math.min(ZERO.length, end - pos);
    if (Buffer.compare(buf.subarray(pos, pos + len), ZERO.subarray(0, len)) !== 0) return false;
  }
  return true;
}
