import { fileURLToPath } from 'node:url'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import t from 'tap'
import taskApi, { type TaskApiOptions } from '../dist/index.js'
import { childExecArgv, childPids, fixture, pluginTimeout } from './helpers.js'

async function register (options: Record<string, unknown>): Promise<unknown> {
  const app = Fastify({ pluginTimeout })
  try {
    await app.register(taskApi, { execArgv: childExecArgv, concurrency: 1, ...options } as unknown as TaskApiOptions)
    await app.ready()
    return app
  } finally {
    await app.close().catch(() => {})
  }
}

t.test('tasks accepts URL objects, file: URL strings and absolute paths', async (t) => {
  for (const location of [fixture('plain.js'), fixture('plain.js').href, fileURLToPath(fixture('plain.js'))]) {
    const app = Fastify({ pluginTimeout })
    await app.register(taskApi, { tasks: [location], concurrency: 1, execArgv: childExecArgv })
    const done = await app.tasks.wait((await app.tasks.submit('plain-js', { seconds: 2 })).uuid)
    t.same(done.outputs, { waited: 2 }, String(location))
    await app.close()
  }
})

t.test('a module may export several tasks', async (t) => {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(taskApi, { tasks: [fixture('basic.ts'), fixture('plain.js')], concurrency: 1, execArgv: childExecArgv })
  t.same([...app.tasks.names].sort(), ['bad-output', 'crash', 'hello', 'multi', 'no-outputs', 'plain-js', 'raises', 'seed-task', 'sleep'])
})

t.test('register fails naming the module or option and the value received', async (t) => {
  const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['duplicate task names', { tasks: [fixture('basic.ts'), fixture('duplicate.ts')] }, 'FST_TASK_API_TASK_DUPLICATE',
      /^Task name "hello" is defined twice: in file:.*\/basic\.js and in file:.*\/duplicate\.js$/],
    ['a module with no task', { tasks: [fixture('empty.js')] }, 'FST_TASK_API_TASK_MODULE',
      /^Task module file:.*\/empty\.js: exports no task/],
    ['an invalid schema', { tasks: [fixture('bad-schema.ts')] }, 'FST_TASK_API_TASK_SCHEMA',
      /^Task "bad-schema" has an invalid input schema: .*type/],
    ['an empty task name', { tasks: [fixture('bad-name.ts')] }, 'FST_TASK_API_TASK_MODULE',
      /bad-name\.js: export "default": name must be a non-empty string, got ""$/],
    ['a module that throws on load', { tasks: [fixture('throws-on-load.js')] }, 'FST_TASK_API_TASK_MODULE',
      /throws-on-load\.js: cannot be imported: this module refuses to load$/],
    ['a module that does not exist', { tasks: [new URL('./fixtures/missing.js', import.meta.url)] }, 'FST_TASK_API_TASK_MODULE',
      /missing\.js: cannot be imported/],
    ['no tasks option', {}, 'FST_TASK_API_OPT_INVALID', /^options\.tasks must be a non-empty array .*, got undefined$/],
    ['an empty tasks array', { tasks: [] }, 'FST_TASK_API_OPT_INVALID', /^options\.tasks must be .*, got an array$/],
    ['a relative path', { tasks: ['./tasks/x.js'] }, 'FST_TASK_API_OPT_INVALID', /^options\.tasks\[0\] must be a file: URL or an absolute path, got "\.\/tasks\/x\.js"$/],
    ['an http URL', { tasks: [new URL('http://example.com/x.js')] }, 'FST_TASK_API_OPT_INVALID', /^options\.tasks\[0\] must be .*, got http:\/\/example\.com\/x\.js$/],
    ['a negative concurrency', { tasks: [fixture('plain.js')], concurrency: -1 }, 'FST_TASK_API_OPT_INVALID', /^options\.concurrency must be a positive integer, got -1$/],
    ['a fractional concurrency', { tasks: [fixture('plain.js')], concurrency: 1.5 }, 'FST_TASK_API_OPT_INVALID', /^options\.concurrency must be a positive integer, got 1\.5$/],
    ['an unknown runner', { tasks: [fixture('plain.js')], runner: 'thread' }, 'FST_TASK_API_OPT_INVALID', /^options\.runner must be "process" or "inline", got "thread"$/],
    ['a prefix without a slash', { tasks: [fixture('plain.js')], prefix: 'tasks' }, 'FST_TASK_API_OPT_INVALID', /^options\.prefix must be a path .*, got "tasks"$/],
    ['a negative progressInterval', { tasks: [fixture('plain.js')], progressInterval: -5 }, 'FST_TASK_API_OPT_INVALID', /^options\.progressInterval must be .*, got -5$/],
    ['a store without methods', { tasks: [fixture('plain.js')], store: {} }, 'FST_TASK_API_OPT_INVALID', /^options\.store must be an object with create, get, update, list, delete, live, expire, finishedSince methods \(see Store\), got an object$/],
    ['execArgv that is not strings', { tasks: [fixture('plain.js')], execArgv: [1] }, 'FST_TASK_API_OPT_INVALID', /^options\.execArgv must be an array of strings, got an array$/],
    ['a zero maxOutputSize', { tasks: [fixture('plain.js')], maxOutputSize: 0 }, 'FST_TASK_API_OPT_INVALID', /^options\.maxOutputSize must be a positive integer, got 0$/],
    ['a negative maxTasksPerChild', { tasks: [fixture('plain.js')], maxTasksPerChild: -1 }, 'FST_TASK_API_OPT_INVALID', /^options\.maxTasksPerChild must be an integer, 0 or more, got -1$/],
    ['a tiny heap limit', { tasks: [fixture('plain.js')], resourceLimits: { maxOldGenerationSizeMb: 1 } }, 'FST_TASK_API_OPT_INVALID', /^options\.resourceLimits\.maxOldGenerationSizeMb must be an integer number of MB, 16 or more, got 1$/],
    ['an unknown resource limit', { tasks: [fixture('plain.js')], resourceLimits: { stackSizeMb: 4 } }, 'FST_TASK_API_OPT_INVALID', /^options\.resourceLimits\.stackSizeMb must be a known option/],
    ['a task with negative retries', { tasks: [fixture('bad-retries.ts')] }, 'FST_TASK_API_TASK_MODULE', /bad-retries\.js: export "default": retries must be an integer from 0 to 1000, got -2$/],
    ['a task whose description is not a string', { tasks: [fixture('bad-description.ts')] }, 'FST_TASK_API_TASK_MODULE', /bad-description\.js: export "default": description must be a string, got 42$/],
    ['a misspelt option', { tasks: [fixture('plain.js')], concurency: 2 }, 'FST_TASK_API_OPT_INVALID', /^options\.concurency must be a known option/],
  ]
  for (const [name, options, code, message] of cases) {
    const err = await register(options).then(() => undefined, (err: Error & { code?: string }) => err)
    t.ok(err, `${name}: register fails`)
    t.equal(err?.code, code, name)
    t.match(err?.message, message, name)
  }
})

t.test('a pool that cannot start fails register and leaves no child behind', async (t) => {
  const before = childPids()
  const err = await register({ tasks: [fixture('plain.js')], execArgv: ['--no-such-node-flag'], concurrency: 2 })
    .then(() => undefined, (err: Error) => err)
  t.equal(err?.message, 'fastify-task-api: a child process could not start: it exited with code 9 before it was ready: ' +
    `${process.execPath}: bad option: --no-such-node-flag`, 'the cause, from the child\'s stderr')
  await new Promise(resolve => setTimeout(resolve, 1500))
  t.same(childPids().filter(pid => !before.includes(pid)), [], 'no child left, and no respawn loop')
})

t.test('registered twice: the same decorator name fails saying how, before any child starts; with decorate and prefix both serve', async (t) => {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv })
  await app.ready()
  const before = childPids().length
  const twice = Fastify({ pluginTimeout })
  t.teardown(() => twice.close())
  await twice.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv })
  await t.rejects(async () => { await twice.register(taskApi, { tasks: [fixture('params.ts')], concurrency: 1, execArgv: childExecArgv, prefix: '/other' }) }, {
    code: 'FST_TASK_API_OPT_INVALID',
    message: 'options.decorate must be a name not yet decorated on this instance (app.tasks exists: fastify-task-api registered twice? give each registration its own decorate and prefix), got "tasks"',
  })
  t.equal(childPids().length, before + 1, 'the second registration started no child')
  await t.rejects(async () => { await Fastify().register(taskApi, { tasks: [fixture('basic.ts')], decorate: 'not a name' }) }, { code: 'FST_TASK_API_OPT_INVALID', message: /^options\.decorate must be a JavaScript identifier/ })

  // Two registrations on one server share the app's @fastify/websocket; without it the
  // second one fails saying so (each would answer every upgrade).
  const noSocket = Fastify({ pluginTimeout })
  t.teardown(() => noSocket.close())
  await noSocket.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv })
  await t.rejects(async () => { await noSocket.register(taskApi, { tasks: [fixture('params.ts')], concurrency: 1, execArgv: childExecArgv, prefix: '/reports', decorate: 'reports' }) }, {
    code: 'FST_TASK_API_OPT_INVALID',
    message: /register @fastify\/websocket in the app before both/,
  })

  const both = Fastify({ pluginTimeout })
  t.teardown(() => both.close())
  const warnings: string[] = []
  both.log.warn = ((...args: unknown[]) => { warnings.push(JSON.stringify(args).slice(0, 200)) }) as never
  await both.register(websocket, { options: { maxPayload: 4096, allowSynchronousEvents: false } })
  await both.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv })
  await both.register(taskApi, { tasks: [fixture('params.ts')], concurrency: 1, execArgv: childExecArgv, prefix: '/reports', decorate: 'reports' })
  await both.listen({ port: 0, host: '127.0.0.1' })
  const reports = both.getDecorator<import('../dist/index.js').TaskApi>('reports')
  t.same(reports.names, ['echo', 'required'])
  t.notOk(both.tasks.names.includes('echo'), 'each registration has its own tasks')
  const created = await both.inject({ method: 'POST', url: '/reports', payload: { task: 'echo', inputs: { int: '3' } } })
  t.equal(created.statusCode, 201)
  const { uuid } = created.json() as { uuid: string }
  t.match(await reports.wait(uuid), { status: 'succeeded', outputs: { inputs: { int: 3 } } })
  t.equal((await both.inject(`/reports/${uuid}`)).statusCode, 200)
  t.equal((await both.inject(`/tasks/${uuid}`)).statusCode, 404, 'and its own records')
  const other = await both.tasks.submit('hello', { name: 'x', count: 1 })
  await both.tasks.wait(other.uuid)
  const { port } = both.server.address() as import('node:net').AddressInfo
  const { default: WebSocket } = await import('ws')
  const firstFrame = async (url: string): Promise<Record<string, unknown>> => await new Promise((resolve, reject) => {
    const socket = new WebSocket(url)
    socket.once('message', data => { resolve(JSON.parse(String(data)) as Record<string, unknown>); socket.close() })
    socket.once('error', reject)
  })
  t.match(await firstFrame(`ws://127.0.0.1:${port}/reports/${uuid}/events`), { type: 'snapshot', uuid, task: { task: 'echo' } }, 'the second one streams')
  t.match(await firstFrame(`ws://127.0.0.1:${port}/tasks/${other.uuid}/events`), { type: 'snapshot', uuid: other.uuid, task: { task: 'hello' } }, 'and the first one too')
  t.equal(both.server.listenerCount('upgrade'), 1, 'one upgrade listener: the app\'s')
  t.same(warnings, [], 'no warning per upgrade')
})
