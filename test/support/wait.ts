/** The waits the tests share: a plain sleep, and polling until a condition holds. */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `cond` every `every` ms until it holds; after `ms` throws "timed out waiting for
 * <what>" (`what` may be a function, for a message computed at the time of the failure).
 */
export async function until(what: string | (() => string), cond: () => boolean | Promise<boolean>, ms = 10_000, every = 20): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(every);
  }
}
