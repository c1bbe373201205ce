// A raw BullMQ worker for bench/distributed.js, in a process of its own (as our worker
// is): BULLMQ_QUEUE on BULLMQ_PREFIX at BULLMQ_REDIS, the sandboxed processor file
// (BullMQ forks a child per concurrent job and keeps it), BULLMQ_CONCURRENCY jobs at once.
// Prints "ready" once it takes jobs; SIGTERM closes it.
import { fileURLToPath } from 'node:url'
import { Worker } from 'bullmq'

const url = new URL(process.env.BULLMQ_REDIS)
const connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null }
const processor = fileURLToPath(new URL('./distributed-processor.js', import.meta.url))
const worker = new Worker(process.env.BULLMQ_QUEUE, processor, {
  connection,
  prefix: process.env.BULLMQ_PREFIX,
  concurrency: Number(process.env.BULLMQ_CONCURRENCY),
  useWorkerThreads: false,
})
worker.on('error', err => console.error('bullmq worker:', err.message))
await worker.waitUntilReady()
console.log('ready')

let stopping = false
process.on('SIGTERM', () => {
  if (stopping) return
  stopping = true
  worker.close().then(() => process.exit(0), () => process.exit(1))
})
