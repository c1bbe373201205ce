// An API node for bench/distributed.js, forked: the plugin on Redis (BENCH_REDIS,
// BENCH_PREFIX) with concurrency 0, so workers elsewhere run the tasks. Reports its port
// over IPC (bench/serve.js).
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { serve } from './serve.js'

const app = Fastify({ logger: false, pluginTimeout: 120_000 })
await app.register(taskApi, {
  tasks: [new URL('./distributed-tasks.js', import.meta.url)],
  redis: { connection: process.env.BENCH_REDIS, prefix: process.env.BENCH_PREFIX },
  concurrency: 0,
})
await serve(app)
