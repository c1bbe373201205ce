import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, childPids, fixture } from './helpers.js'

// Each fault runs in a real child process; after each, the next task succeeds.

let app: FastifyInstance
t.before(async () => {
  app = await build(t, { tasks: [fixture('faults.ts'), fixture('basic.ts')], concurrency: 1 })
})

async function run (task: string) {
  return app.tasks.wait((await app.tasks.submit(task, {})).uuid)
}

async function nextSucceeds (t: Test): Promise<void> {
  const next = await app.tasks.wait((await app.tasks.submit('hello', { name: 'next' })).uuid)
  t.equal(next.status, 'succeeded', 'the next task succeeds')
  t.equal(childPids().length, 1, 'the pool is back to one child')
}

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

t.test('a thrown non-Error value fails the task with a clear message', async (t) => {
  const done = await run('throws-string')
  t.equal(done.status, 'failed')
  t.equal(done.error, 'a non-Error value was thrown: a bare string')
  await nextSucceeds(t)
})
