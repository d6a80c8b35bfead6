/** An AbortSignal that fires on the first SIGINT or SIGTERM, so a long command cancels cleanly. */
export function interruptSignal(): AbortSignal {
  const ac = new AbortController();
  const onSig = (): void => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  return ac.signal;
}
