/** Printing for every CLI verb: human tables or JSON, and a progress line on a TTY. */
import type { Progress } from '../core/base.ts';
import { formatBytes, formatDuration } from '../core/base.ts';

export interface OutputOptions {
  json?: boolean;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/**
 * Output written as it is produced, in writes of ~64 KiB (a line per write syscall made listing 393k entries
 * slow; collecting them first held them all): `line` adds text, `end` writes the rest. Waits when stdout is
 * a stream that asks to (drain).
 */
export class OutputBuffer {
  private text = '';

  async line(s: string): Promise<void> {
    this.text += s;
    if (this.text.length >= 64 * 1024) await this.flush();
  }

  async end(): Promise<void> {
    await this.flush();
  }

  private async flush(): Promise<void> {
    const text = this.text;
    this.text = '';
    if (text !== '' && !process.stdout.write(text))
      await new Promise<void>((resolve) => process.stdout.once('drain', resolve));
  }
}

/** A JSON array printed as `printJson` prints it, an element at a time as they come. */
export async function printJsonArray(items: AsyncIterable<unknown>): Promise<void> {
  const out = new OutputBuffer();
  let first = true;
  for await (const item of items) {
    await out.line(`${first ? '[\n' : ',\n'}  ${JSON.stringify(item, null, 2).replace(/\n/g, '\n  ')}`);
    first = false;
  }
  await out.line(first ? '[]\n' : '\n]\n');
  await out.end();
}

/** Left-aligned columns; rows are arrays of cells already formatted as text. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n') + '\n';
}

export function printTable(headers: string[], rows: string[][]): void {
  process.stdout.write(formatTable(headers, rows));
}

/** A progress renderer: rewrites one stderr line on a TTY (bytes, rate, ETA); silent otherwise. */
export function progressPrinter(enabled = process.stderr.isTTY === true): {
  update: (p: Progress) => void;
  done: () => void;
} {
  const start = Date.now();
  let last = 0;
  let shown = false;
  return {
    update(p) {
      if (!enabled) return;
      const now = Date.now();
      if (now - last < 200) return;
      last = now;
      const secs = Math.max((now - start) / 1000, 0.001);
      const rate = p.bytesRead / secs;
      const eta =
        p.bytesTotal && rate > 0
          ? ` ETA ${formatDuration(((p.bytesTotal - p.bytesRead) / rate) * 1000)}`
          : '';
      const total = p.bytesTotal ? ` / ${formatBytes(p.bytesTotal)}` : '';
      const items = p.items !== undefined ? ` ${p.items}${p.itemsTotal ? '/' + p.itemsTotal : ''} items` : '';
      process.stderr.write(
        `\r\x1b[2K${p.phase}: ${formatBytes(p.bytesRead)}${total} read, ${formatBytes(p.bytesTransferred)} stored, ${formatBytes(rate)}/s${eta}${items}`,
      );
      shown = true;
    },
    done() {
      if (shown) process.stderr.write('\r\x1b[2K');
    },
  };
}
