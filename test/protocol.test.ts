import t from 'tap'
import { ProcessPool } from '../dist/runner/pool.js'
import type { JobResult } from '../dist/runner/types.js'
import { build, childExecArgv, childPids, fixture } from './helpers.js'
import { ended, logLines, lastingZombies } from './proc.js'

// Task code is trusted but buggy: whatever it says on its child's IPC channel, or fails
// to say, stays inside its own task. Real children, the real process table.
// Real forks under tsx take a second or two each: this file gets more than tap's default.
t.setTimeout(180_000)

t.test('task code that breaks the IPC protocol fails its own task as a protocol error, and the child is replaced', async (t) => {
  const logs: string[] = []
  const app = await build(t, { tasks: [fixture('containment.ts'), fixture('basic.ts')] },
    { logger: { level: 'warn', stream: { write: (line: string) => { logs.push(line) } } } })
  const cases: Array<[string, string]> = [
    ['done-for-another', '"done" for another task'],
    ['second-ready', 'a second "ready"'],
    ['malformed', 'a malformed message'],
    ['negative-progress', 'a malformed message'],
    ['infinite-target', 'a malformed message'],
    ['second-ack', 'an unexpected "ack" for the task twice'],
  ]
  for (const [kind, what] of cases) {
    const [before] = childPids()
    const done = await app.tasks.wait((await app.tasks.submit('rogue', { kind })).uuid)
    t.equal(done.status, 'failed', kind)
    t.equal(done.error, `protocol error from the child process: ${what}`, kind)
    t.equal(done.progress, null, `${kind}: nothing of the bad message was stored`)
    const next = await app.tasks.wait((await app.tasks.submit('hello', { name: kind })).uuid)
    t.equal(next.status, 'succeeded', `${kind}: the next task succeeds`)
    t.not(childPids()[0], before, `${kind}: in a new child`)
    t.equal(childPids().length, 1, `${kind}: the pool is back to one child`)
  }
  t.equal(logLines(logs).filter(entry => entry.msg === 'fastify-task-api: protocol error from a child process; it is replaced').length, cases.length, 'each is logged')
  t.same(await lastingZombies(), [], 'no zombie lasts')
})

t.test('an update sent after the task ended replaces the idle child; the ended task keeps its result', async (t) => {
  const app = await build(t, { tasks: [fixture('containment.ts'), fixture('basic.ts')] })
  const done = await app.tasks.wait((await app.tasks.submit('late-update')).uuid)
  t.equal(done.status, 'succeeded')
  const pid = done.outputs.pid as number
  await ended([pid])
  t.same(await app.tasks.get(done.uuid), done, 'the late update changed nothing')
  const next = await app.tasks.wait((await app.tasks.submit('hello', { name: 'next' })).uuid)
  t.equal(next.status, 'succeeded')
  t.equal(childPids().length, 1)
})

t.test('the server enforces the message, output and error limits itself, whatever arrives over IPC', async (t) => {
  const app = await build(t, { tasks: [fixture('containment.ts')], maxMessages: 100, maxMessageLength: 20, maxOutputSize: 64 * 1024 })
  const messages = await app.tasks.wait((await app.tasks.submit('oversized', { kind: 'messages' })).uuid)
  t.equal(messages.status, 'succeeded')
  t.equal(messages.messages.length, 100, 'the newest maxMessages are kept')
  t.equal(messages.messagesDropped, 400, 'the rest are counted')
  t.equal(messages.messages[0], `400 ${'m'.repeat(15)}…`, 'each cut to maxMessageLength')
  t.ok(messages.messages.every(message => message.length === 20))
  const output = await app.tasks.wait((await app.tasks.submit('oversized', { kind: 'output' })).uuid)
  t.equal(output.status, 'failed')
  t.equal(output.error, 'task result is 200002 bytes as JSON, over the maxOutputSize of 65536 bytes')
  const error = await app.tasks.wait((await app.tasks.submit('oversized', { kind: 'error' })).uuid)
  t.equal(error.status, 'failed')
  t.equal(error.error?.length, 4096, 'an error text is cut to 4096 characters')
  t.equal(error.error, `${'e'.repeat(4095)}…`)
})

t.test('a child that does not acknowledge a task is replaced; the task runs in another child', async (t) => {
  const app = await build(t, { tasks: [fixture('basic.ts')], ackTimeout: 300 })
  const [stopped] = childPids()
  process.kill(stopped as number, 'SIGSTOP')
  const done = await app.tasks.wait((await app.tasks.submit('hello', { name: 'handed over' })).uuid)
  t.equal(done.status, 'succeeded')
  t.equal(done.attempt, 1, 'the hand-over is not an attempt')
  await ended([stopped as number])
  t.equal(childPids().length, 1)
})

t.test('a task no child acknowledges twice fails, naming the bound', async (t) => {
  const app = await build(t, { tasks: [fixture('deaf.ts')], ackTimeout: 300, env: { ...process.env, DEAF_CHILD: '1' } })
  const done = await app.tasks.wait((await app.tasks.submit('deaf')).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.error, 'the child process did not acknowledge the task within 300 ms')
  t.equal(done.started, null, 'it never started')
})

function nested (depth: number): unknown {
  let value: unknown = 'bottom'
  for (let i = 0; i < depth; i++) value = i % 2 === 0 ? { deeper: value } : [value]
  return value
}

t.test('a job that cannot be sent to a child fails alone; the pool never throws and the worker stays', async (t) => {
  const results = new Map<string, JobResult>()
  const started: string[] = []
  let finished: (() => void) | undefined
  const pool = new ProcessPool({
    modules: [fixture('basic.ts').href],
    concurrency: 1,
    progressInterval: 50,
    limits: { maxMessages: 100, maxMessageLength: 100, maxOutputSize: 1024 },
    execArgv: childExecArgv,
  })
  t.teardown(() => pool.close())
  await pool.start({
    started: uuid => started.push(uuid),
    update: () => {},
    finished: (uuid, result) => {
      results.set(uuid, result)
      finished?.()
    },
  })
  const until = async (uuid: string): Promise<JobResult> => {
    while (!results.has(uuid)) await new Promise<void>((resolve) => { finished = resolve })
    return results.get(uuid) as JobResult
  }
  const deep = { name: 'x', extra: nested(20_000) }
  // On an idle worker.
  pool.enqueue({ uuid: 'idle-deep', task: 'hello', inputs: deep, attempt: 1 })
  t.match(await until('idle-deep'), { ok: false, error: 'the task\'s inputs cannot be sent to a child process', retry: false })
  t.notOk(started.includes('idle-deep'), 'it never started')
  // Queued behind a running job: handed over from the child's message handler.
  pool.enqueue({ uuid: 'running', task: 'sleep', inputs: { ms: 100 }, attempt: 1 })
  pool.enqueue({ uuid: 'queued-deep', task: 'hello', inputs: { name: 'x', extra: nested(20_000) }, attempt: 1 })
  pool.enqueue({ uuid: 'after', task: 'hello', inputs: { name: 'after', count: 1 }, attempt: 1 })
  t.match(await until('running'), { ok: true })
  t.match(await until('queued-deep'), { ok: false, error: 'the task\'s inputs cannot be sent to a child process' })
  t.same(await until('after'), { ok: true, value: 'Hello after' }, 'the same worker runs the next job')
  t.equal(pool.running, 0, 'nothing stays running')
  t.equal(childPids().length, 1, 'the child was not replaced')
})
