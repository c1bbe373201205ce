// Forked by bench/run.js: a Fastify server with the plugin (noop task, one child).
// Listens on 127.0.0.1, port 0, and reports the port over IPC. With BENCH_DB set, its
// records live in a SQLite file there (the sqlite step); otherwise in memory.
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { serve } from './serve.js'

let store
if (process.env.BENCH_DB !== undefined) {
  const { SqliteStore } = await import('fastify-task-api/sqlite')
  store = new SqliteStore({ path: process.env.BENCH_DB })
}
const app = Fastify({ logger: false })
await app.register(taskApi, {
  tasks: [new URL('./tasks.js', import.meta.url)],
  concurrency: 1,
  runner: 'process',
  ...(store !== undefined ? { store } : {}),
})
await serve(app, () => ({ stats: app.tasks.stats() }))
