import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import type { TaskEvent, TaskState } from '../dist/index.js'
import { startWorker, type TaskWorker } from '../dist/redis/index.js'
import { RedisStore } from '../dist/redis/store.js'
import { newRecord } from '../dist/store/types.js'
import { build, childExecArgv, fixture, until } from './helpers.js'
import { startRedis } from './redis-server.js'

// Scale-out in one process: API nodes (the plugin with `redis`, concurrency 0) and
// workers (startWorker) on one real redis-server. A task submitted on one node runs on a
// worker; another node answers for it and streams its events.

const redis = await startRedis(t)

async function deployment (t: Test, workerTasks = [fixture('basic.ts'), fixture('control.ts')]): Promise<{ prefix: string, worker: TaskWorker }> {
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks: workerTasks, concurrency: 2, execArgv: childExecArgv, shutdownTimeout: 200, cancelGrace: 500 })
  t.teardown(() => worker.close())
  return { prefix, worker }
}

const apiNode = async (t: Test, prefix: string) => build(t, { tasks: [fixture('basic.ts'), fixture('control.ts')], redis: { connection: redis.url, prefix }, concurrency: 0, list: true })

t.test('submitted on node A, run by a worker, answered and streamed by node B in seq order', async (t) => {
  const { prefix } = await deployment(t)
  const a = await apiNode(t, prefix)
  const b = await apiNode(t, prefix)
  const created = await a.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'cluster', count: 3 } } })
  t.equal(created.statusCode, 201)
  const { uuid } = created.json() as TaskState
  const seen: TaskEvent[] = []
  const off = b.tasks.subscribe(uuid, event => seen.push(event))
  t.teardown(off)
  const done = await b.tasks.wait(uuid)
  t.match(done, { status: 'succeeded', outputs: { output: 'Hello cluster' }, messages: ['step 0', 'step 1', 'step 2'], progress: 3, attempt: 1 })
  t.match((await a.inject(`/tasks/${uuid}`)).json(), { status: 'succeeded' }, 'node A answers the same')
  const seqs = seen.map(event => event.seq)
  t.same(seqs, [...seqs].sort((x, y) => x - y), `node B saw the events in seq order: ${seqs.join(',')}`)
  t.ok(seen.some(event => event.type === 'status' && event.status === 'succeeded'), 'including the final status')
  t.same((await b.inject('/tasks?limit=10')).json().tasks.map((task: TaskState) => task.uuid), [uuid], 'either node lists it')
})

t.test('cancel from another node: a waiting task ends cancelled at once, a running one is stopped by its worker', async (t) => {
  const { prefix } = await deployment(t)
  const a = await apiNode(t, prefix)
  const b = await apiNode(t, prefix)
  // Two slots: two cooperative tasks run; the third waits in the queue.
  const running = [await a.tasks.submit('cooperative'), await a.tasks.submit('cooperative')]
  const waiting = await a.tasks.submit('cooperative')
  await until('both to run', async () => (await Promise.all(running.map(async task => (await b.tasks.get(task.uuid))?.status))).every(status => status === 'running'), 30_000)
  t.match(await b.tasks.cancel(waiting.uuid), { status: 'cancelled' }, 'the waiting one, at once')
  await b.tasks.cancel(running[0]!.uuid)
  t.match(await a.tasks.wait(running[0]!.uuid), { status: 'cancelled' }, 'the running one, through its worker')
  await b.tasks.cancel(running[1]!.uuid)
  t.match(await a.tasks.wait(running[1]!.uuid), { status: 'cancelled' })
})

t.test('a cancel published while the worker\'s cancel subscriber is cut is not lost: the worker finds its mark', async (t) => {
  const { prefix } = await deployment(t)
  const a = await apiNode(t, prefix)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const subscriberId = async (): Promise<string | undefined> => {
    const line = (await admin.client('LIST') as string).split('\n').find(entry => / name=fastify-task-api:worker-cancels /.test(entry))
    return /^id=(\d+) /.exec(line ?? '')?.[1]
  }
  const outcomes: string[] = []
  for (let i = 0; i < 3; i++) {
    const task = await a.tasks.submit('cooperative')
    await until('it to run', async () => (await a.tasks.get(task.uuid))?.status === 'running', 30_000)
    const id = await subscriberId()
    t.ok(id, 'the worker\'s cancel subscriber is named in CLIENT LIST')
    // ioredis reconnects 50 ms or more after the cut: the cancel is published meanwhile.
    await admin.client('KILL', 'ID', id!)
    t.match(await a.tasks.cancel(task.uuid), { status: 'running' }, 'the cancel is taken')
    t.not(await subscriberId(), id, 'the subscriber was cut when the cancel was published')
    const end = await Promise.race([a.tasks.wait(task.uuid), new Promise<undefined>(resolve => setTimeout(resolve, 10_000))])
    outcomes.push(end?.status ?? 'still running after 10 s')
    await until('the subscriber to be back', async () => (await subscriberId()) !== undefined, 10_000)
  }
  t.same(outcomes, ['cancelled', 'cancelled', 'cancelled'])
})

t.test('a record without a job (its API node died before queuing it, or a failover lost the job) is queued again by a worker: pending runs, running ends as a crash would', async (t) => {
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix, reconcileInterval: 300 }, tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const store = new RedisStore({ connection: redis.url, prefix, exclusive: false })
  t.teardown(() => store.close())
  const created = new Date(Date.now() - 1000).toISOString()
  const orphan = newRecord({ uuid: randomUUID(), task: 'hello', inputs: { name: 'orphan', count: 1 }, created })
  const lost = newRecord({ uuid: randomUUID(), task: 'hello', inputs: { name: 'lost', count: 1 }, created, status: 'running', attempt: 1, started: created })
  const fresh = newRecord({ uuid: randomUUID(), task: 'hello', inputs: { name: 'fresh', count: 1 }, created: new Date(Date.now() + 60_000).toISOString() })
  for (const record of [orphan, lost, fresh]) await store.create(record)
  const ended = async (uuid: string) => ['succeeded', 'failed', 'cancelled'].includes((await store.get(uuid))?.status ?? '')
  await until('the orphan and the lost one to end', async () => await ended(orphan.uuid) && await ended(lost.uuid), 20_000)
  t.match(await store.get(orphan.uuid), { status: 'succeeded', outputs: { output: 'Hello orphan' }, attempt: 1 }, 'the pending record without a job ran')
  t.match(await store.get(lost.uuid), { status: 'failed', error: 'interrupted: the server stopped while the task was running' }, 'the running one without a job ended as a crash would (no retries)')
  t.equal((await store.get(fresh.uuid))?.status, 'pending', 'a record younger than reconcileInterval is left to the submission under way')
})

t.test('a task whose module a worker lacks fails with a clear error; the others run', async (t) => {
  const { prefix } = await deployment(t, [fixture('basic.ts')])
  const a = await apiNode(t, prefix)
  const missing = await a.tasks.submit('cooperative')
  const fine = await a.tasks.submit('hello', { name: 'x', count: 1 })
  t.match(await a.tasks.wait(missing.uuid), { status: 'failed', error: 'task "cooperative" is not registered on this worker' })
  t.match(await a.tasks.wait(fine.uuid), { status: 'succeeded' })
})

t.test('a failed attempt waits out its backoff in the queue (a delayed job), not in a worker slot; a cancel meanwhile ends it at once', async (t) => {
  const tasks = [fixture('retrying.ts'), fixture('basic.ts')]
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks, concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const api = await build(t, { tasks, redis: { connection: redis.url, prefix }, concurrency: 0 })
  const failing = await api.tasks.submit('failing')
  await until('the first attempt to fail', async () => (await api.tasks.get(failing.uuid))?.error === 'attempt 1 failed')
  // The only slot of the only worker is free during the backoff: another task runs now.
  const other = await api.tasks.submit('hello', { name: 'meanwhile', count: 1 })
  t.match(await api.tasks.wait(other.uuid), { status: 'succeeded', outputs: { output: 'Hello meanwhile' } })
  t.match(await api.tasks.get(failing.uuid), { status: 'pending', attempt: 1, error: 'attempt 1 failed' }, 'the other task ended while the failed one still waits for its retry')
  t.match(await api.tasks.wait(failing.uuid), { status: 'failed', attempt: 2, error: 'attempt 2 failed' }, 'then its retry ran')
  const cancelled = await api.tasks.submit('failing')
  await until('the first attempt to fail', async () => (await api.tasks.get(cancelled.uuid))?.error === 'attempt 1 failed')
  await api.tasks.cancel(cancelled.uuid)
  t.match(await api.tasks.get(cancelled.uuid), { status: 'cancelled', attempt: 1 }, 'cancelled at once: its delayed job left the queue')
  await new Promise(resolve => setTimeout(resolve, 4500))
  t.match(await api.tasks.get(cancelled.uuid), { status: 'cancelled', attempt: 1 }, 'and it never ran again')
})

t.test('a worker SIGKILLed mid-task: after lockDuration another worker takes the task and ends it as restart recovery would (no retries: failed, interrupted)', async (t) => {
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const a = await apiNode(t, prefix)
  const { spawn } = await import('node:child_process')
  const doomed = spawn(process.execPath, ['--input-type=module', '-e', `
    import { startWorker } from ${JSON.stringify(new URL('../dist/redis/index.js', import.meta.url).href)}
    await startWorker({ redis: { connection: ${JSON.stringify(redis.url)}, prefix: ${JSON.stringify(prefix)}, lockDuration: 1000 }, tasks: [${JSON.stringify(fixture('basic.ts').href)}], concurrency: 1, execArgv: [] })
    console.log('ready')`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => doomed.kill('SIGKILL'))
  await new Promise<void>(resolve => doomed.stdout?.on('data', (chunk: Buffer) => { if (chunk.toString().includes('ready')) resolve() }))
  const task = await a.tasks.submit('sleep', { ms: 60_000 })
  await until('the task to run on the doomed worker', async () => (await a.tasks.get(task.uuid))?.status === 'running', 30_000)
  doomed.kill('SIGKILL')
  await new Promise(resolve => doomed.once('exit', resolve))
  t.equal((await a.tasks.get(task.uuid))?.status, 'running', 'still running: nobody knows yet')
  const rescuer = await startWorker({ redis: { connection: redis.url, prefix, lockDuration: 1000 }, tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => rescuer.close())
  t.match(await a.tasks.wait(task.uuid), { status: 'failed', error: 'interrupted: the server stopped while the task was running', attempt: 1 })
})

t.test('cancels sent around the moment an attempt fails (while its job is handed back for the backoff) all end the task cancelled, never retried', async (t) => {
  const tasks = [fixture('retrying.ts')]
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const worker = await startWorker({ redis: { connection: redis.url, prefix }, tasks, concurrency: 4, execArgv: childExecArgv, shutdownTimeout: 200 })
  t.teardown(() => worker.close())
  const api = await build(t, { tasks, redis: { connection: redis.url, prefix }, concurrency: 0 })
  // Each task fails 300 ms after it starts; its cancel comes 250 to 400 ms after it is
  // seen running: before, during or after the hand-back. (A race, so not every run hits
  // the hand-back; before the fix about one cancel in ten in such a window was lost.)
  const outcomes = await Promise.all(Array.from({ length: 16 }, async () => {
    const { uuid } = await api.tasks.submit('fails-later', { ms: 300 })
    await until('it to run', async () => (await api.tasks.get(uuid))?.status === 'running', 30_000)
    await new Promise(resolve => setTimeout(resolve, 250 + Math.random() * 150))
    await api.tasks.cancel(uuid)
    await until('it to end', async () => ['cancelled', 'succeeded', 'failed'].includes((await api.tasks.get(uuid))?.status ?? ''), 30_000)
    // Past the backoff: a lost cancel would show as a second attempt by now.
    await new Promise(resolve => setTimeout(resolve, 3500))
    const { status, attempt } = await api.tasks.get(uuid) as TaskState
    return { status, attempt }
  }))
  t.same(outcomes.filter(outcome => outcome.status !== 'cancelled' || outcome.attempt !== 1), [], 'every task cancelled in its first attempt or backoff')
})

for (const retries of [false, true]) {
  t.test(`a worker paused past its lock (SIGSTOP) loses its task to another; resumed, it never overwrites the record (${retries ? 'retries: the later attempt\'s outputs stay' : 'no retries: the failed status stays'})`, async (t) => {
    const { spawn } = await import('node:child_process')
    const { fileURLToPath } = await import('node:url')
    const prefix = `{dist-${randomUUID().slice(0, 8)}}`
    const durable = fixture('durable.ts')
    const api = await build(t, { tasks: [durable], redis: { connection: redis.url, prefix }, concurrency: 0 })
    const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
    const first = spawn(process.execPath, [cli, 'worker', '--redis', redis.url, '--prefix', prefix, '--lock-duration', '1000', fileURLToPath(durable)], { stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => { first.kill('SIGCONT'); first.kill('SIGKILL') })
    let log = ''
    first.stderr?.on('data', (chunk: Buffer) => { log += chunk.toString() })
    await new Promise<void>((resolve, reject) => {
      first.stdout?.on('data', (chunk: Buffer) => { if (chunk.toString().includes('running')) resolve() })
      first.once('exit', code => reject(new Error(`worker 1 exited with ${String(code)}`)))
    })
    const { uuid } = await api.tasks.submit(retries ? 'again' : 'once', { n: 7, ms: 3000 })
    const finals: TaskState[] = []
    const off = api.tasks.subscribe(uuid, (event) => { if (event.type === 'status' && event.task !== undefined && ['succeeded', 'failed', 'cancelled'].includes(event.status)) finals.push(event.task) })
    t.teardown(off)
    await until('worker 1 to run it', async () => (await api.tasks.get(uuid))?.status === 'running')
    first.kill('SIGSTOP')
    const second = await startWorker({ redis: { connection: redis.url, prefix, lockDuration: 1000 }, tasks: [durable], execArgv: childExecArgv, shutdownTimeout: 200 })
    t.teardown(() => second.close())
    const ended = await api.tasks.wait(uuid)
    if (retries) t.match(ended, { status: 'succeeded', attempt: 2, outputs: { n: 7, attempt: 2 } }, 'worker 2 ran attempt 2')
    else t.match(ended, { status: 'failed', attempt: 1, error: /^interrupted/ }, 'worker 2 failed it as interrupted')
    first.kill('SIGCONT')
    // Worker 1's child finished attempt 1 long ago; its result reaches worker 1 now, and
    // its write is refused: worker 1 says so, and drops the task.
    await until('worker 1 to find its task taken over', () => log.includes('another worker took this task over'), 30_000).catch((err: Error) => { console.error('WORKER1 LOG', log); throw err })
    t.same(await api.tasks.get(uuid), ended, 'the record is as worker 2 left it')
    t.equal(finals.length, 1, 'one final event, never a second one')
  })
}

t.test('an API node with concurrency > 0 runs tasks itself (an embedded worker); app.close() stops it', async (t) => {
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const node = await build(t, { redis: { connection: redis.url, prefix }, concurrency: 1 })
  const task = await node.tasks.submit('hello', { name: 'embedded', count: 2 })
  t.match(await node.tasks.wait(task.uuid), { status: 'succeeded', outputs: { output: 'Hello embedded' } })
  await t.resolves(node.close(), 'app.close() stops the embedded worker and its pool')
})

t.test('options: redis excludes store, concurrency 0 needs redis, fields are checked', async (t) => {
  const { MemoryStore } = await import('../dist/index.js')
  await t.rejects(build(t, { redis: { connection: redis.url }, store: new MemoryStore() }), { code: 'FST_TASK_API_OPT_INVALID', message: /store/ })
  await t.rejects(build(t, { concurrency: 0 }), { code: 'FST_TASK_API_OPT_INVALID', message: /concurrency/ })
  await t.rejects(build(t, { redis: { connection: 42 as never } }), { code: 'FST_TASK_API_OPT_INVALID', message: /redis\.connection/ })
  await t.rejects(build(t, { redis: { connection: redis.url, lockDuration: 5 } }), { code: 'FST_TASK_API_OPT_INVALID', message: /redis\.lockDuration/ })
  await t.rejects(startWorker({ redis: { connection: redis.url }, tasks: [fixture('basic.ts')], concurrency: 0 }), { name: 'TypeError', message: 'options.concurrency must be an integer >= 1 (a worker runs tasks), got 0' })
})

t.test('an ioredis client as the connection is refused, saying to pass its options', async (t) => {
  const { Redis } = await import('ioredis')
  const client = new Redis(redis.url)
  t.teardown(() => client.quit())
  await t.rejects(build(t, { tasks: [fixture('basic.ts')], redis: { connection: client as never }, concurrency: 1 }), { code: 'FST_TASK_API_OPT_INVALID', message: /redis\.connection.*not a client.*client\.options/ })
  await t.rejects(startWorker({ redis: { connection: client as never }, tasks: [fixture('basic.ts')] }), { code: 'FST_TASK_API_OPT_INVALID', message: /not a client/ })
  t.equal(await client.ping(), 'PONG', 'the app\'s client is left alone')
  // Its options work.
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const node = await build(t, { tasks: [fixture('basic.ts')], redis: { connection: { ...client.options } as Record<string, unknown>, prefix }, concurrency: 1 })
  const created = await node.tasks.submit('hello', { name: 'options', count: 1 })
  t.match(await node.tasks.wait(created.uuid), { status: 'succeeded' })
})

t.test('Redis at its maxmemory (noeviction): a submission answers 503 with Retry-After, not 500; accepted again once it has room', async (t) => {
  const own = await startRedis(t)
  const { Redis } = await import('ioredis')
  const admin = new Redis(own.url)
  t.teardown(() => admin.quit())
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const node = await build(t, { tasks: [fixture('basic.ts')], redis: { connection: own.url, prefix }, concurrency: 1 })
  await admin.config('SET', 'maxmemory-policy', 'noeviction')
  await admin.config('SET', 'maxmemory', '1')
  const full = await node.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x', count: 1 } } })
  t.equal(full.statusCode, 503, full.body)
  t.match(full.json(), { code: 'FST_TASK_API_STORE_UNAVAILABLE' })
  t.equal(full.headers['retry-after'], '1')
  await admin.config('SET', 'maxmemory', '0')
  const again = await node.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'y', count: 1 } } })
  t.equal(again.statusCode, 201, again.body)
  t.match(await node.tasks.wait(again.json().uuid), { status: 'succeeded' })
})

t.test('Redis stopped, then started again: the API answers 503 fast, never hangs; every task accepted before runs to its end once Redis is back', async (t) => {
  const own = await startRedis(t, { persist: true })
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const node = await build(t, { tasks: [fixture('basic.ts')], redis: { connection: own.url, prefix, lockDuration: 1000 }, concurrency: 1, list: true })
  const accepted = await node.tasks.submit('sleep', { ms: 1500 })
  const queued = await node.tasks.submit('hello', { name: 'after', count: 1 })
  await own.stop('term')
  const started = Date.now()
  const [submit, get, list] = await Promise.all([
    node.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } }),
    node.inject(`/tasks/${accepted.uuid}`),
    node.inject('/tasks?limit=5'),
  ])
  const elapsed = Date.now() - started
  t.equal(submit.statusCode, 503, 'submit: 503')
  t.match(submit.json(), { code: 'FST_TASK_API_STORE_UNAVAILABLE' })
  t.equal(submit.headers['retry-after'], '1')
  t.equal(get.statusCode, 503, 'get: 503')
  t.equal(list.statusCode, 503, 'list: 503')
  // Not a timing target: a hang check (a command waits at most 2 s for Redis).
  t.ok(elapsed < 15_000, `answered, not hanging (${elapsed} ms)`)
  await own.start()
  await until('the API to read from Redis again', async () => (await node.inject(`/tasks/${queued.uuid}`)).statusCode === 200, 20_000)
  // Back by itself: the tasks accepted before the outage end, and submissions work again.
  t.match(await node.tasks.wait(queued.uuid), { status: 'succeeded' }, 'a task queued before the outage ran')
  t.match(await node.tasks.wait(accepted.uuid), { status: /^(succeeded|failed)$/ }, 'the one running during the outage reached a final status')
  let again: { statusCode: number } | undefined
  for (const deadline = Date.now() + 20_000; Date.now() < deadline;) {
    again = await node.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'again', count: 1 } } })
    if (again.statusCode === 201) break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  t.equal(again?.statusCode, 201, 'submissions are accepted again')
})

t.test('app.close() with Redis gone does not hang', async (t) => {
  const own = await startRedis(t)
  const prefix = `{dist-${randomUUID().slice(0, 8)}}`
  const node = await build(t, { tasks: [fixture('basic.ts')], redis: { connection: own.url, prefix, lockDuration: 1000 }, concurrency: 1 })
  await node.tasks.submit('sleep', { ms: 60_000 })
  await own.stop('kill')
  // A hang check, not a timing target: the close bounds each wait for Redis to a second.
  const outcome = await Promise.race([node.close().then(() => 'closed'), new Promise(resolve => setTimeout(() => resolve('still closing after 30 s'), 30_000).unref())])
  t.equal(outcome, 'closed')
})
