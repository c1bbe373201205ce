// Shared by the bench servers: listen on 127.0.0.1 (port 0), report the port over IPC,
// answer CPU-time queries, and close on 'stop', SIGTERM or a lost parent.

/** From the bench side: the forked server's own CPU time (process.cpuUsage()), over IPC. */
export function serverCpu (child) {
  return new Promise((resolve) => {
    const onMessage = (message) => {
      if (message?.type !== 'cpu') return
      child.off('message', onMessage)
      resolve(message.usage)
    }
    child.on('message', onMessage)
    child.send({ type: 'cpu' })
  })
}

/** Starts `app` and wires it to bench/run.js. `closedInfo()` is sent back when it closes. */
export async function serve (app, closedInfo = () => ({})) {
  await app.listen({ host: '127.0.0.1', port: 0 })
  let closing = false
  async function shutdown () {
    if (closing) return
    closing = true
    const info = closedInfo()
    try { await app.close() } finally {
      process.send?.({ type: 'closed', ...info }, () => process.exit(0))
      setTimeout(() => process.exit(0), 1000).unref()
    }
  }
  process.on('SIGTERM', shutdown)
  process.on('message', (m) => {
    if (m?.type === 'stop') shutdown()
    // CPU time of this process (not of task children), for µs per request.
    if (m?.type === 'cpu') process.send({ type: 'cpu', usage: process.cpuUsage() })
  })
  process.on('disconnect', () => process.exit(0))
  process.send({ type: 'listening', port: app.server.address().port })
}
