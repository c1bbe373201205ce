import t from 'tap'
import type { TaskEvent } from '../dist/index.js'
import { build, childPids, fixture, untilMessage } from './helpers.js'

// README, Retries: what is retried and what is not, through the public API only.

const tasks = [fixture('retry-rules.ts'), fixture('signals.ts')]

t.test('a child that ran out of memory is retried, in a fresh child', async (t) => {
  const app = await build(t, { tasks, resourceLimits: { maxOldGenerationSizeMb: 64 } })
  const [first] = childPids()
  const { uuid } = await app.tasks.submit('oom-once')
  const events: TaskEvent[] = []
  app.tasks.subscribe(uuid, event => events.push(event))
  const done = await app.tasks.wait(uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 2)
  t.not(done.outputs.pid, first, 'the second attempt ran in the replacement child')
  const retry = events.find(event => event.type === 'status' && event.status === 'pending')
  t.equal(retry?.type === 'status' ? retry.task?.error : undefined,
    'the child process running the task ran out of memory (heap limit 64 MB)', 'the retry event names the failure')
})

t.test('each attempt gets the full timeout: a second attempt that starts after the first timed out still has its time', async (t) => {
  // The first attempt uses up all of its 1500 ms; the second then works 500 ms. Had the
  // attempts shared one budget, the second would be cut at once.
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('slow-start', { hang: 1, work: 500 })).uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 2)
  t.equal(done.outputs.attempt, 2)
})

t.test('and each attempt is timed: a second attempt that hangs times out too, and retries run out', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('slow-start', { hang: 2, work: 0 })).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.attempt, 2)
  t.equal(done.error, 'timed out after 1500 ms')
})

t.test('nothing that fails while the server is closing is retried: a thrown error, a crash', async (t) => {
  const app = await build(t, { tasks, concurrency: 2, shutdownTimeout: 30_000 })
  const thrower = await app.tasks.submit('fail-on-cue')
  const throwerPid = Number((await untilMessage(app, thrower.uuid, 'pid ')).slice(4))
  const crasher = await app.tasks.submit('fail-on-cue')
  const crasherPid = Number((await untilMessage(app, crasher.uuid, 'pid ')).slice(4))
  const queued = await app.tasks.submit('whoami')
  t.same(app.tasks.stats(), { queued: 1, running: 2, subscribers: 0, streams: 0 })
  const closed = app.close()
  // Closing has begun once the queued task is cancelled (close cancels queued tasks first).
  t.equal((await app.tasks.wait(queued.uuid)).status, 'cancelled')
  process.kill(throwerPid, 'SIGUSR2')
  process.kill(crasherPid, 'SIGKILL')
  const [threw, crashed] = await Promise.all([app.tasks.wait(thrower.uuid), app.tasks.wait(crasher.uuid)])
  t.match(threw, { status: 'failed', attempt: 1, error: 'failed on cue' }, 'the thrown error ends it: no retry')
  t.match(crashed, { status: 'failed', attempt: 1, error: 'the child process running the task was killed by signal SIGKILL' }, 'so does the crash')
  await closed
  t.same(app.tasks.stats(), { queued: 0, running: 0, subscribers: 0, streams: 0 })
})
