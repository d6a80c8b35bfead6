// @ts-check
/**
 * Transport: every call carries the bearer token; errors become ApiError with the server's code and message.
 * Action events come over the server-sent-events route read with fetch (EventSource cannot send a header,
 * and the token must not go into a URL).
 */

export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** @param {Response} res */
async function errorOf(res) {
  let code = 'HTTP';
  let message = `HTTP ${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? message);
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, code, message);
}

/** @param {string} token */
export function createApi(token) {
  const headers = { authorization: `Bearer ${token}` };

  /** @param {string} path @param {AbortSignal} [signal] */
  async function get(path, signal) {
    let res;
    try {
      res = await fetch(path, { headers, signal, cache: 'no-store' });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ApiError(0, 'NETWORK', `cannot reach the Tern server (${String(err)})`);
    }
    if (!res.ok) throw await errorOf(res);
    return res.json();
  }

  /**
   * Calls `onOpen()` once connected, then `onEvent(name, data)` for each event until the stream ends
   * (resolves) or fails (rejects).
   * @param {string} path @param {{ onOpen: () => void, onEvent: (name: string, data: unknown) => void }} on
   * @param {AbortSignal} signal
   */
  async function events(path, on, signal) {
    const res = await fetch(path, { headers: { ...headers, accept: 'text/event-stream' }, signal });
    if (!res.ok || !res.body) throw await errorOf(res);
    on.onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
        }
        if (data.length > 0) on.onEvent(name, JSON.parse(data.join('\n')));
      }
    }
  }

  return { get, events };
}
