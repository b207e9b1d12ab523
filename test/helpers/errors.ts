/** The error `p` rejects with; a promise that resolves, or rejects with a non-Error, fails the test. */
export async function rejectionOf(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`expected an Error, got a rejection with ${String(err)}`);
  }
  throw new Error('expected a rejection, but the promise resolved');
}
