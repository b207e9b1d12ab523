/** Resolves after `ms`. The timer is unref'd: a pause never keeps the process alive by itself. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}
