import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { build, fixture } from './helpers.js'
import { startRedis } from './redis-server.js'

// The worker command, as a deployment runs it: `fastify-task-api worker --redis … <modules>`,
// a real process next to an API node on a real redis-server.

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const redis = await startRedis(t)

t.test('the worker command runs the tasks of an API-only node and stops on SIGTERM with exit code 0', async (t) => {
  const prefix = `{cli-${randomUUID().slice(0, 8)}}`
  const worker = spawn(process.execPath, [cli, 'worker', '--redis', redis.url, '--prefix', prefix, '--concurrency', '2', '--lock-duration', '2000', fileURLToPath(fixture('basic.ts'))], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => worker.kill('SIGKILL'))
  let out = ''
  await new Promise<void>((resolve, reject) => {
    worker.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes('running')) resolve()
    })
    worker.once('exit', code => reject(new Error(`the worker exited with ${String(code)}: ${out}`)))
  })
  t.match(out, /^fastify-task-api worker: running 1 task module\(s\), concurrency 2, pid \d+/)
  const api = await build(t, { redis: { connection: redis.url, prefix }, concurrency: 0 })
  const task = await api.tasks.submit('hello', { name: 'cli', count: 2 })
  t.match(await api.tasks.wait(task.uuid), { status: 'succeeded', outputs: { output: 'Hello cli' } })
  const exited = new Promise<number | null>(resolve => worker.once('exit', code => resolve(code)))
  worker.kill('SIGTERM')
  t.equal(await exited, 0, 'exit code 0 after a graceful stop')
  t.match(out, /SIGTERM: stopping/)
})

t.test('usage errors exit 2, saying what is wrong', async (t) => {
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' })
  const cases: Array<[string[], RegExp]> = [
    [[], /^fastify-task-api: no command\nusage: fastify-task-api worker --redis/],
    [['serve'], /^fastify-task-api: unknown command "serve"/],
    [['worker', 'a.js'], /^fastify-task-api: --redis is required/],
    [['worker', '--redis', redis.url], /^fastify-task-api: no task module given/],
    [['worker', '--redis', redis.url, '--concurrency', 'two', 'a.js'], /^fastify-task-api: --concurrency must be a whole number, got "two"/],
    [['worker', '--redis', redis.url, '--bogus', 'a.js'], /^fastify-task-api: Unknown option '--bogus'/],
    [['worker', '--redis', redis.url, '--concurrency', '0', 'a.js'], /^fastify-task-api: --concurrency must be at least 1: a worker runs tasks/],
  ]
  for (const [args, message] of cases) {
    const result = run(...args)
    t.equal(result.status, 2, args.join(' ') || '(no arguments)')
    t.match(result.stderr, message)
  }
})
