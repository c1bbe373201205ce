import t from 'tap'
import Fastify from 'fastify'
import taskApi from '../dist/index.js'
import { build, childExecArgv, childPids, exists, fixture, pluginTimeout, startWitness, until, untilRunning } from './helpers.js'

/*
 * How a running task is stopped (README: POST /tasks/:uuid/cancel, the timeout option):
 * its signal is aborted; if it has not ended cancelGrace ms later its process gets
 * SIGTERM, then SIGKILL. Seen from inside the task (fixtures/signals.ts notes each step
 * in a file) and from the process table, through the public API only. No timings are
 * asserted: only the order, and what never happens.
 */

const tasks = [fixture('signals.ts')]

t.test('a timed-out task that ignores its signal and SIGTERM: abort, SIGTERM, then SIGKILL; it fails with "timed out"', async (t) => {
  const app = await build(t, { tasks, timeout: 300, cancelGrace: 100 })
  const witness = await startWitness(t, app, { sigterm: 'ignore' })
  const done = await app.tasks.wait(witness.uuid)
  t.equal(done.status, 'failed')
  t.match(done.error, /^timed out after 300 ms; it did not end on its signal, so its process was stopped after cancelGrace \(100 ms\): \d+ ms in all$/)
  t.ok(Number(/(\d+) ms in all/.exec(done.error ?? '')?.[1]) >= 400, `${done.error}: at least the timeout and the grace`)
  await until('the killed child to leave the process table', () => !exists(witness.pid))
  t.same(witness.log(), ['abort', 'SIGTERM'], 'aborted, then SIGTERM, then ended by a signal it could not catch')
  const next = await app.tasks.wait((await app.tasks.submit('whoami')).uuid)
  t.equal(next.status, 'succeeded', 'the pool carries on')
  t.not(next.outputs.pid, witness.pid, 'in a fresh child')
  t.same(childPids(), [next.outputs.pid], 'and only that one')
})

t.test('a timed-out task that dies of SIGTERM is not sent anything more', async (t) => {
  const app = await build(t, { tasks, timeout: 300, cancelGrace: 100 })
  const witness = await startWitness(t, app, { sigterm: 'die' })
  const done = await app.tasks.wait(witness.uuid)
  t.match(done.error, /^timed out after 300 ms; it did not end on its signal, so its process was stopped after cancelGrace \(100 ms\): \d+ ms in all$/)
  t.ok(Number(/(\d+) ms in all/.exec(done.error ?? '')?.[1]) >= 400, `${done.error}: at least the timeout and the grace`)
  await until('the child to leave the process table', () => !exists(witness.pid))
  t.same(witness.log(), ['abort', 'SIGTERM'])
})

t.test('a task that honours its abort within cancelGrace gets no SIGTERM and keeps its child', async (t) => {
  // A grace far longer than the task's cleanup, so nothing but the task itself ends it.
  const app = await build(t, { tasks, cancelGrace: 30_000 })
  const witness = await startWitness(t, app, { sigterm: 'die', honourAfter: 100 })
  await app.tasks.cancel(witness.uuid)
  const done = await app.tasks.wait(witness.uuid)
  t.equal(done.status, 'cancelled')
  t.equal(done.error, null)
  const next = await app.tasks.wait((await app.tasks.submit('whoami')).uuid)
  t.equal(next.outputs.pid, witness.pid, 'the next task runs in the same child')
  t.same(witness.log(), ['abort'], 'which saw its abort and no signal')
})

t.test('a child killed from outside fails its task naming the signal', async (t) => {
  const app = await build(t, { tasks: [fixture('basic.ts')] })
  const task = await app.tasks.submit('sleep', { ms: 60_000 })
  await untilRunning(app, task.uuid)
  const [pid] = childPids()
  process.kill(pid as number, 'SIGTERM')
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'failed')
  t.equal(done.error, 'the child process running the task was killed by signal SIGTERM')
})

t.test('at close, a task still running after shutdownTimeout has its signal aborted, then its process SIGTERM and SIGKILL', async (t) => {
  const app = Fastify({ pluginTimeout })
  await app.register(taskApi, { tasks, concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 100 })
  const witness = await startWitness(t, app, { sigterm: 'ignore' })
  await app.close()
  t.notOk(exists(witness.pid), 'the child is gone when close resolves')
  t.same(witness.log().sort(), ['SIGTERM', 'abort'], 'it saw its abort and the SIGTERM (in either order: a message and a signal race), and died of SIGKILL')
  t.equal((await app.tasks.get(witness.uuid))?.status, 'cancelled')
})
