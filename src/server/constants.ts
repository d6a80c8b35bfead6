/** Facts shared by the server and its clients (the CLI), kept free of imports so the CLI loads fast. */

/** Where `tern server` writes the URL it listens on, inside the data dir (clients read it). */
export const SERVER_URL_FILE = 'server.url';
/** host:port when --listen is not given. */
export const DEFAULT_LISTEN = '127.0.0.1:8470';
/** API path prefix. */
export const API = '/v1';
