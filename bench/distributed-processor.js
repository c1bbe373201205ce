// BullMQ's sandboxed processor for bench/distributed.js: a no-op that returns when it was
// entered (the same stamp as the `stamp` task), run by BullMQ in a child process it forks.
export default async function processor () {
  return performance.timeOrigin + performance.now()
}
