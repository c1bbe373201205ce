import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, childPids, exists, fixture, startWitness, until, untilRunning, zombiePids } from './helpers.js'

// The fault suite: each fault runs in a real child process of one pool of size 1, and
// after each the next task succeeds, the pool is back to exactly one child, and no
// process is left unreaped. (Close while tasks run: runner.test.ts, "app.close() ends
// every child".)

const heapMb = 64
let app: FastifyInstance
t.before(async () => {
  app = await build(t, {
    tasks: [fixture('faults.ts'), fixture('basic.ts'), fixture('control.ts'), fixture('stream.ts'), fixture('env.ts'), fixture('signals.ts')],
    concurrency: 1,
    cancelGrace: 100,
    maxMessages: 100,
    maxMessageLength: 20,
    maxOutputSize: 64 * 1024,
    resourceLimits: { maxOldGenerationSizeMb: heapMb },
    // env.ts refuses to load in the children (it loads in the server).
    env: { ...process.env, FAIL_IN_CHILD: '1' },
  })
})

async function run (task: string, inputs: Record<string, unknown> = {}) {
  return app.tasks.wait((await app.tasks.submit(task, inputs)).uuid)
}


async function nextSucceeds (t: Test): Promise<void> {
  const next = await run('hello', { name: 'next' })
  t.equal(next.status, 'succeeded', 'the next task succeeds')
  t.equal(childPids().length, 1, 'the pool is back to one child')
  t.same(zombiePids(), [], 'no zombie')
}

t.test('exit(1) mid-task: failed, progress so far kept, the child replaced', async (t) => {
  const before = childPids()
  const done = await run('crash', { code: 1 })
  t.equal(done.status, 'failed')
  t.equal(done.error, 'the child process running the task exited with code 1')
  t.equal(done.progress, 1, 'progress reported before the crash is kept')
  await nextSucceeds(t)
  t.notSame(childPids(), before, 'the dead child was replaced')
})

t.test('exit(0) without a result is a failure', async (t) => {
  const done = await run('crash', { code: 0 })
  t.equal(done.status, 'failed')
  t.equal(done.error, 'the child process running the task exited with code 0')
  await nextSucceeds(t)
})

t.test('SIGKILL from outside', async (t) => {
  const task = await app.tasks.submit('sleep', { ms: 30_000 })
  await untilRunning(app, task.uuid)
  const [pid] = childPids()
  process.kill(pid as number, 'SIGKILL')
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'failed')
  t.equal(done.error, 'the child process running the task was killed by signal SIGKILL')
  await nextSucceeds(t)
})

t.test('out of memory: the task fails with a clear error, the server\'s memory stays flat', async (t) => {
  const rss = process.memoryUsage().rss
  const done = await run('hog')
  t.equal(done.status, 'failed')
  t.equal(done.error, `the child process running the task ran out of memory (heap limit ${heapMb} MB)`)
  const grown = (process.memoryUsage().rss - rss) / 1024 / 1024
  t.ok(grown < heapMb, `the server grew by ${grown.toFixed(1)} MB, less than the child's ${heapMb} MB heap`)
  await nextSucceeds(t)
})

t.test('an infinite loop is ended by its timeout', async (t) => {
  const done = await run('forever')
  t.equal(done.status, 'failed')
  t.match(done.error, /^timed out after 300 ms; it did not end on its signal, so its process was stopped after cancelGrace \(\d+ ms\): \d+ ms in all$/, 'a loop never sees its signal: it ends after the grace')
  await nextSucceeds(t)
})

t.test('a task that ignores its signal and SIGTERM is cancelled: SIGTERM, then SIGKILL', async (t) => {
  const witness = await startWitness(t, app, { sigterm: 'ignore' })
  await app.tasks.cancel(witness.uuid)
  const done = await app.tasks.wait(witness.uuid)
  t.equal(done.status, 'cancelled')
  await until('the killed child to leave the process table', () => !exists(witness.pid))
  // It caught SIGTERM and every other catchable signal that ends a process, and never
  // exited on its own: what ended it was SIGKILL.
  t.same(witness.log(), ['abort', 'SIGTERM'], 'its signal was aborted, then SIGTERM came, and nothing else it could see')
  await nextSucceeds(t)
})

t.test('an uncaught exception in the child fails the task with its message', async (t) => {
  const done = await run('uncaught')
  t.equal(done.status, 'failed')
  t.equal(done.error, 'uncaught exception in the child process: thrown from a timer')
  await nextSucceeds(t)
})

t.test('an unhandled rejection in the child fails the task with its message', async (t) => {
  const done = await run('unhandled')
  t.equal(done.status, 'failed')
  t.equal(done.error, 'uncaught exception in the child process: a promise nobody awaited')
  await nextSucceeds(t)
})

t.test('a module that throws on load in the children fails its own tasks only', async (t) => {
  const done = await run('env', { name: 'PATH' })
  t.equal(done.status, 'failed')
  t.equal(done.error, 'task "env" is unavailable')
  await nextSucceeds(t)
})

t.test('a result that cannot be sent fails the task: circular object', async (t) => {
  const done = await run('circular')
  t.equal(done.status, 'failed')
  t.match(done.error, /^task result cannot be sent from the child process: Converting circular structure to JSON/)
  await nextSucceeds(t)
})

t.test('a result that cannot be sent fails the task: BigInt', async (t) => {
  const done = await run('bigint')
  t.equal(done.status, 'failed')
  t.match(done.error, /^task result cannot be sent from the child process: Do not know how to serialize a BigInt/)
  await nextSucceeds(t)
})

t.test('a result over maxOutputSize fails the task; one just under it succeeds', async (t) => {
  const done = await run('big', { bytes: 100_000 })
  t.equal(done.status, 'failed')
  t.equal(done.error, 'task result is 100002 bytes as JSON, over the maxOutputSize of 65536 bytes')
  const fits = await run('big', { bytes: 64 * 1024 - 2 })
  t.equal(fits.status, 'succeeded', 'exactly maxOutputSize bytes of JSON is allowed')
  await nextSucceeds(t)
})

t.test('a thrown non-Error value fails the task with a clear message', async (t) => {
  const done = await run('throws-string')
  t.equal(done.status, 'failed')
  t.equal(done.error, 'a non-Error value was thrown: a bare string')
  await nextSucceeds(t)
})

t.test('100,000 messages: the newest maxMessages are kept, the rest counted', async (t) => {
  const done = await run('flood', { count: 100_000, size: 50 })
  t.equal(done.status, 'succeeded')
  t.equal(done.messages.length, 100)
  t.equal(done.messagesDropped, 99_900)
  t.equal(done.messages.at(-1), '99999 xxxxxxxxxxxxx…', 'the newest is last, cut to maxMessageLength')
  t.ok(done.messages.every(message => message.length <= 20))
  const parsed = done.messages.map(message => Number(message.split(' ')[0]))
  t.same(parsed, Array.from({ length: 100 }, (_, i) => 99_900 + i), 'the newest 100, in order')
  await nextSucceeds(t)
})

t.test('NaN progress fails the task in the child; nothing is stored', async (t) => {
  const done = await run('nan')
  t.equal(done.status, 'failed')
  t.equal(done.error, 'setProgress expects a finite number of 0 or more, got NaN')
  t.equal(done.progress, null)
  await nextSucceeds(t)
})

t.test('cancel of a finished task changes nothing', async (t) => {
  const done = await run('hello', { name: 'done' })
  const res = await app.inject({ method: 'POST', url: `/tasks/${done.uuid}/cancel` })
  t.equal(res.statusCode, 200)
  t.same(res.json(), done)
  t.same(await app.tasks.get(done.uuid), done)
  await nextSucceeds(t)
})

t.test('maxTasksPerChild: a child is replaced after that many tasks, and the pool never grows', async (t) => {
  const recycled = await build(t, { tasks: [fixture('faults.ts')], concurrency: 1, maxTasksPerChild: 2 })
  const before = childPids()
  const pids: number[] = []
  let most = 0
  for (let i = 0; i < 6; i++) {
    const done = await recycled.tasks.wait((await recycled.tasks.submit('pid')).uuid)
    t.equal(done.status, 'succeeded')
    pids.push(done.outputs.pid as number)
    most = Math.max(most, childPids().filter(pid => !before.includes(pid)).length)
  }
  const [a, b, c] = [pids[0], pids[2], pids[4]]
  t.same(pids, [a, a, b, b, c, c], 'two tasks per child')
  t.equal(new Set([a, b, c]).size, 3, 'three different children')
  t.ok(most <= 1, 'never more children than the pool size')
  // The sixth task retired its child: wait for it to be reaped and replaced (a child that
  // has exited but is not reaped yet is still in the process table, as a zombie).
  const deadline = Date.now() + 10_000
  while ((zombiePids().length > 0 || childPids().filter(pid => !before.includes(pid)).length !== 1) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.same(zombiePids(), [], 'the retired children were reaped')
  t.equal(childPids().filter(pid => !before.includes(pid)).length, 1, 'and replaced')
})
