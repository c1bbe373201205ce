import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import t from 'tap'
import taskApi from '../dist/index.js'
import { build, childExecArgv, childPids, fixture, fixtureSource, pluginTimeout, untilRunning, zombiePids } from './helpers.js'

t.test('tasks queued behind a crash still run', async (t) => {
  const app = await build(t)
  const crashed = await app.tasks.submit('crash', { code: 1 })
  const queued = await Promise.all([1, 2, 3].map(i => app.tasks.submit('hello', { name: String(i) })))
  t.equal((await app.tasks.wait(crashed.uuid)).status, 'failed')
  for (const task of queued) t.equal((await app.tasks.wait(task.uuid)).status, 'succeeded')
})

t.test('outputs: one, several, none, and a mismatch that fails naming the output', async (t) => {
  const app = await build(t)
  const one = await app.tasks.wait((await app.tasks.submit('hello', { name: 'x', count: 1 })).uuid)
  t.same(one.outputs, { output: 'Hello x' })
  const several = await app.tasks.wait((await app.tasks.submit('multi')).uuid)
  t.same(several.outputs, { out: 'Foo', count: 5 })
  const none = await app.tasks.wait((await app.tasks.submit('no-outputs')).uuid)
  t.equal(none.status, 'succeeded')
  t.same(none.outputs, {}, 'the return value is ignored when no output is declared')
  const bad = await app.tasks.wait((await app.tasks.submit('bad-output')).uuid)
  t.equal(bad.status, 'failed')
  t.equal(bad.error, 'task returned invalid outputs: outputs/output must be string')
})

t.test('both task forms run; a Task subclass gets a fresh instance per run', async (t) => {
  const app = await build(t, { tasks: [fixture('basic.ts'), fixture('plain.js')] })
  const seed = await app.tasks.wait((await app.tasks.submit('seed-task', { name: 'Ada', count: 2 })).uuid)
  t.same(seed.outputs, { output: 'Some output for Ada' })
  t.equal(seed.progress, 2)
  t.equal(seed.target, 2)
  const plain = await app.tasks.wait((await app.tasks.submit('plain-js', { seconds: '4' })).uuid)
  t.same(plain.outputs, { waited: 4 })
})

t.test('TypeScript task modules load in the children with the default execArgv', async (t) => {
  // Under tap, process.execArgv holds tap's loaders plus --import=tsx; the children inherit it.
  t.ok(process.execArgv.some(arg => arg.includes('tsx')), 'this test runs under tsx')
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(taskApi, { tasks: [fixtureSource('basic.ts')], concurrency: 1 })
  const done = await app.tasks.wait((await app.tasks.submit('hello', { name: 'ts' })).uuid)
  t.same(done.outputs, { output: 'Hello ts' })
})

t.test('runner "inline" runs tasks in this process with the same task API', async (t) => {
  const app = await build(t, { runner: 'inline', tasks: [fixture('basic.ts'), fixture('progress.ts')] })
  const before = childPids()
  const done = await app.tasks.wait((await app.tasks.submit('hello', { name: 'inline', count: 3 })).uuid)
  t.same(done.outputs, { output: 'Hello inline' })
  t.same(done.messages, ['step 0', 'step 1', 'step 2'])
  t.equal(done.progress, 3)
  const failed = await app.tasks.wait((await app.tasks.submit('raises', { message: 'inline boom' })).uuid)
  t.equal(failed.error, 'inline boom')
  const bad = await app.tasks.wait((await app.tasks.submit('bad-progress', { kind: 'nan' })).uuid)
  t.equal(bad.error, 'setProgress expects a finite number of 0 or more, got NaN')
  t.same(childPids(), before, 'no child process was forked')
})

t.test('app.close() ends every child: none left, no zombies', async (t) => {
  const before = childPids()
  const app = Fastify({ pluginTimeout })
  await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 3, execArgv: childExecArgv, shutdownTimeout: 200, cancelGrace: 100 })
  const pids = childPids().filter(pid => !before.includes(pid))
  t.equal(pids.length, 3, 'three children while open')
  const [running] = await Promise.all([1, 2, 3].map(() => app.tasks.submit('sleep', { ms: 30_000 })))
  const queued = await app.tasks.submit('sleep', { ms: 1 })
  if (running === undefined) throw new Error('unreachable')
  let finalRunning: string | undefined
  app.tasks.subscribe(running.uuid, event => { if (event.type === 'status' && event.task) finalRunning = event.task.status })
  await untilRunning(app, running.uuid)
  await app.close()
  t.same(childPids().filter(pid => pids.includes(pid)), [], 'no child left')
  t.same(zombiePids().filter(pid => pids.includes(pid)), [], 'no zombie left')
  for (const pid of pids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `process ${pid} is gone`)
  t.equal(finalRunning, 'cancelled', 'a task still running after shutdownTimeout is cancelled')
  t.equal(app.tasks.stats().running, 0)
  t.equal((await app.tasks.get(queued.uuid))?.status, 'cancelled', 'a queued task is cancelled')
  await t.rejects(app.tasks.submit('hello', { name: 'late' }), { code: 'FST_TASK_API_RUNNER_CLOSED', statusCode: 503 })
})

t.test('children exit when the parent process dies', async (t) => {
  const parent = spawn(process.execPath, ['--import=tsx', fileURLToPath(fixtureSource('parent-server.ts'))], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve) => parent.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString())))
  const pids = (JSON.parse(line) as number[]).filter(pid => pid > 0)
  t.equal(pids.length, 2, 'the server has its two children (concurrency: 2)')
  parent.kill('SIGKILL')
  await new Promise(resolve => parent.once('exit', resolve))
  const deadline = Date.now() + 10_000
  const alive = (): number[] => pids.filter(pid => { try { process.kill(pid, 0); return true } catch { return false } })
  while (alive().length > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
  t.same(alive(), [], 'no orphan outlives its parent')
})

t.test('graceful shutdown: running tasks finish, new submissions get 503', async (t) => {
  const app = Fastify({ pluginTimeout })
  await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 5000 })
  const running = await app.tasks.submit('sleep', { ms: 300 })
  await untilRunning(app, running.uuid)
  const closing = app.close()
  await new Promise(resolve => setImmediate(resolve))
  await t.rejects(app.tasks.submit('hello', { name: 'late' }), { code: 'FST_TASK_API_RUNNER_CLOSED', statusCode: 503 })
  await closing
  t.equal((await app.tasks.get(running.uuid))?.status, 'succeeded', 'the running task was allowed to finish')
  t.same(childPids(), [], 'and no child is left')
})

t.test('children inherit the environment unless option env gives an explicit set', async (t) => {
  process.env.TASK_API_TEST_SECRET = 'inherited'
  t.teardown(() => { delete process.env.TASK_API_TEST_SECRET })
  const inherit = await build(t, { tasks: [fixture('env.ts')] })
  t.equal((await inherit.tasks.wait((await inherit.tasks.submit('env', { name: 'TASK_API_TEST_SECRET' })).uuid)).outputs.value, 'inherited')
  const explicit = await build(t, { tasks: [fixture('env.ts')], env: { PATH: process.env.PATH ?? '', ONLY_THIS: 'yes' } })
  t.equal((await explicit.tasks.wait((await explicit.tasks.submit('env', { name: 'TASK_API_TEST_SECRET' })).uuid)).outputs.value, null, 'the secret did not leak')
  t.equal((await explicit.tasks.wait((await explicit.tasks.submit('env', { name: 'ONLY_THIS' })).uuid)).outputs.value, 'yes')
})

t.test('a module that fails to load in the children fails its tasks as "unavailable"; the detail is only logged', async (t) => {
  const logs: string[] = []
  const app = await build(t, { tasks: [fixture('env.ts'), fixture('basic.ts')], env: { ...process.env, FAIL_IN_CHILD: '1' } },
    { logger: { level: 'warn', stream: { write: (line: string) => { logs.push(line) } } } })
  const failed = await app.tasks.wait((await app.tasks.submit('env', { name: 'PATH' })).uuid)
  t.equal(failed.status, 'failed')
  t.equal(failed.error, 'task "env" is unavailable', 'clients learn nothing about the module')
  const res = await app.inject({ method: 'GET', url: `/tasks/${failed.uuid}` })
  t.notMatch(res.body, /refuses to load|env\.[jt]s/, 'nor over REST')
  const entries = logs.map(line => JSON.parse(line) as { msg: string, detail?: string, loadErrors?: string[] })
  const failure = entries.find(entry => entry.msg === 'fastify-task-api: task failed')
  t.match(failure?.detail, /^task "env" could not be loaded in the child process: .*env\.[jt]s: this module refuses to load in a child$/, 'the log has the cause')
  const load = entries.find(entry => entry.msg.startsWith('fastify-task-api: task modules failed to load in a child process'))
  t.match(load?.loadErrors?.[0], /env\.[jt]s: this module refuses to load in a child$/, 'logged when the child starts, too')
  t.equal((await app.tasks.wait((await app.tasks.submit('hello', { name: 'x' })).uuid)).status, 'succeeded')
})
