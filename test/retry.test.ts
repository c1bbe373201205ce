import t from 'tap'
import { backoffDelay, loadTask, defineTask, TaskError } from '../dist/task.js'
import type { TaskEvent } from '../dist/index.js'
import { build, childPids, fixture } from './helpers.js'

const tasks = [fixture('retry.ts')]

t.test('a failing task is retried; the record shows the attempt, each attempt starts over', async (t) => {
  const app = await build(t, { tasks })
  const events: TaskEvent[] = []
  const created = await app.tasks.submit('flaky', { failures: 2 })
  t.equal(created.attempt, 0, 'no attempt before the first run')
  const unsubscribe = app.tasks.subscribe(created.uuid, event => events.push(event))
  const done = await app.tasks.wait(created.uuid)
  unsubscribe()
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 3)
  t.same(done.outputs, { attempt: 3 })
  t.equal(done.error, null, 'the earlier attempts\' error is cleared by the success')
  t.equal(done.progress, 3, 'progress is that of the last attempt')
  t.same(done.messages, ['attempt 1', 'attempt 2', 'attempt 3'], 'messages of every attempt are kept')
  const statuses = events.filter(e => e.type === 'status').map(e => e.type === 'status' ? e.status : '')
  // (The first 'running' may come before the subscription.)
  t.same(statuses.slice(-5), ['pending', 'running', 'pending', 'running', 'succeeded'])
  const retry = events.find(e => e.type === 'status' && e.status === 'pending')
  t.equal(retry?.type === 'status' ? retry.task?.error : undefined, 'attempt 1 failed', 'the retry event carries the record with the failure')
  t.equal(retry?.type === 'status' ? retry.task?.progress : undefined, null, 'progress starts over')
  const seqs = events.map(e => e.seq)
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'seq still increases')
})

t.test('retries run out: failed with the last attempt\'s error', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('always-fails')).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.attempt, 3, 'retries: 2 means three attempts')
  t.equal(done.error, 'attempt 3 failed')
})

t.test('TaskError with retry: false fails at once', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('fatal')).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.attempt, 1)
  t.equal(done.error, 'the invoice does not exist')
})

t.test('invalid outputs are not retried', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('bad-outputs')).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.attempt, 1)
  t.match(done.error, /^task returned invalid outputs/)
})

t.test('a crashed child is retried in a fresh child', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('crash-once')).uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 2)
  t.equal(childPids().length, 1)
  t.same(childPids(), [done.outputs.pid], 'the second attempt ran in the replacement child')
})

t.test('a timed-out attempt is retried', async (t) => {
  const app = await build(t, { tasks, cancelGrace: 50 })
  const done = await app.tasks.wait((await app.tasks.submit('hang-once')).uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 2)
  t.same(done.outputs, { attempt: 2 })
  t.equal(childPids().length, 1, 'the hung child was replaced, not added to')
})

t.test('cancel during the backoff ends the task at once, with no further attempt', async (t) => {
  const app = await build(t, { tasks })
  const { uuid } = await app.tasks.submit('slow-retry')
  while ((await app.tasks.get(uuid))?.error === null) await new Promise(resolve => setTimeout(resolve, 5))
  const waiting = await app.tasks.get(uuid)
  t.equal(waiting?.status, 'pending', 'waiting for its retry')
  t.equal(waiting?.error, 'not yet')
  const res = await app.inject({ method: 'POST', url: `/tasks/${uuid}/cancel` })
  t.equal(res.statusCode, 200)
  t.equal(res.json().status, 'cancelled')
  const done = await app.tasks.wait(uuid)
  t.equal(done.status, 'cancelled')
  t.equal(done.attempt, 1)
  t.same(app.tasks.stats(), { queued: 0, running: 0, subscribers: 0, streams: 0 })
})

t.test('close during the backoff cancels the task, without waiting for the backoff', async (t) => {
  // The backoff is 60 s: close would hit tap's timeout if it waited for it.
  const app = await build(t, { tasks })
  const { uuid } = await app.tasks.submit('slow-retry')
  while ((await app.tasks.get(uuid))?.error === null) await new Promise(resolve => setTimeout(resolve, 5))
  const events: TaskEvent[] = []
  app.tasks.subscribe(uuid, event => events.push(event))
  await app.close()
  t.same(events.map(event => event.type === 'status' ? event.status : event.type), ['cancelled'], 'the one event: cancelled')
  t.equal((await app.tasks.get(uuid))?.attempt, 1, 'no further attempt')
})

t.test('the inline runner retries too', async (t) => {
  const app = await build(t, { tasks, runner: 'inline' })
  const done = await app.tasks.wait((await app.tasks.submit('flaky', { failures: 1 })).uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 2)
  const fatal = await app.tasks.wait((await app.tasks.submit('fatal')).uuid)
  t.equal(fatal.attempt, 1)
})

t.test('backoff schedules', async (t) => {
  t.equal(backoffDelay(250, 1), 250)
  t.equal(backoffDelay(250, 4), 250)
  t.equal(backoffDelay({ type: 'fixed', delay: 100 }, 3), 100)
  t.same([1, 2, 3, 4].map(n => backoffDelay({ type: 'exponential', delay: 100 }, n)), [100, 200, 400, 800])
  t.same([1, 2, 3, 4].map(n => backoffDelay({ type: 'exponential', delay: 100, maxDelay: 300 }, n)), [100, 200, 300, 300])
})

t.test('retries and backoff are checked when the task loads', async (t) => {
  const task = (extra: object) => ({ ...defineTask({ name: 'x', run () {} }), ...extra })
  t.throws(() => loadTask(task({ retries: -1 }), 'default'), /retries must be an integer from 0 to 1000, got -1/)
  t.throws(() => loadTask(task({ retries: 1.5 }), 'default'), /retries must be an integer/)
  t.throws(() => loadTask(task({ backoff: { type: 'linear', delay: 5 } }), 'default'), /backoff must be milliseconds or/)
  t.throws(() => loadTask(task({ backoff: -5 }), 'default'), /backoff must be/)
  t.equal(loadTask(task({}), 'default').retries, 0, 'off by default')
  t.same(loadTask(task({ retries: 2 }), 'default').backoff, { type: 'exponential', delay: 1000 }, 'default backoff')
})

t.test('TaskError', async (t) => {
  const err = new TaskError('nope', { retry: false, cause: new Error('root') })
  t.ok(err instanceof Error)
  t.ok(err instanceof TaskError)
  t.equal(err.retry, false)
  t.equal(err.name, 'TaskError')
  t.equal((err.cause as Error).message, 'root')
  t.equal(new TaskError('again').retry, true, 'retryable unless told otherwise')
  t.notOk(Object.assign(new Error('x'), { retry: false }) instanceof TaskError, 'a look-alike is not a TaskError')
})
