#!/usr/bin/env node
/*
 * npx fastify-task-api worker --redis redis://host:6379 [--prefix '{p}'] [--concurrency N]
 *   [--lock-duration ms] [--shutdown-timeout ms] <task module>...
 *
 * Starts a worker (startWorker) on the deployment's Redis, running the task modules given
 * (paths or file: URLs of compiled JavaScript). SIGTERM or SIGINT stops it gracefully.
 */
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const usage = `usage: fastify-task-api worker --redis <redis://url> [--prefix <prefix>] [--concurrency <n>]
       [--lock-duration <ms>] [--shutdown-timeout <ms>] <task module>...`

function fail (message: string): never {
  process.stderr.write(`fastify-task-api: ${message}\n${usage}\n`)
  process.exit(2)
}

function integer (name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  if (!/^[0-9]+$/.test(value)) fail(`--${name} must be a whole number, got ${JSON.stringify(value)}`)
  return Number(value)
}

async function main (argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  if (command !== 'worker') fail(command === undefined ? 'no command' : `unknown command ${JSON.stringify(command)}`)
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        redis: { type: 'string' },
        prefix: { type: 'string' },
        concurrency: { type: 'string' },
        'lock-duration': { type: 'string' },
        'shutdown-timeout': { type: 'string' },
      },
    })
  } catch (err) {
    fail((err as Error).message)
  }
  const { values, positionals } = parsed
  if (values.redis === undefined) fail('--redis is required')
  if (positionals.length === 0) fail('no task module given')
  const tasks = positionals.map(location => location.startsWith('file:') ? location : pathToFileURL(resolve(location)).href)
  const concurrency = integer('concurrency', values.concurrency)
  if (concurrency === 0) fail('--concurrency must be at least 1: a worker runs tasks')
  const lockDuration = integer('lock-duration', values['lock-duration'])
  const shutdownTimeout = integer('shutdown-timeout', values['shutdown-timeout'])
  const { startWorker } = await import('./redis/worker.js')
  const worker = await startWorker({
    redis: { connection: values.redis, ...(values.prefix === undefined ? {} : { prefix: values.prefix }), ...(lockDuration === undefined ? {} : { lockDuration }) },
    tasks,
    ...(concurrency === undefined ? {} : { concurrency }),
    ...(shutdownTimeout === undefined ? {} : { shutdownTimeout }),
  })
  process.stdout.write(`fastify-task-api worker: running ${tasks.length} task module(s), concurrency ${concurrency ?? 1}, pid ${process.pid}\n`)
  let stopping = false
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (stopping) return
      stopping = true
      process.stdout.write(`fastify-task-api worker: ${signal}: stopping\n`)
      worker.close().then(() => process.exit(0), (err: unknown) => {
        process.stderr.write(`fastify-task-api worker: ${(err as Error).stack ?? String(err)}\n`)
        process.exit(1)
      })
    })
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`fastify-task-api: ${(err as Error).message}\n`)
  process.exit(1)
})
