import t from 'tap'
import { build, fixture, submit } from './helpers.js'

// Ports of django-task-api's tests/test_api.py, then the REST surface around them.

t.test('creates a task: 201 with a uuid, and run() gets the inputs', async (t) => {
  const app = await build(t, { tasks: [fixture('params.ts')] })
  const res = await submit(app, 'required', { test: 'Test', optional: 'Test' }, '/tasks/')
  t.equal(res.statusCode, 201)
  const body = res.json()
  t.match(body.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  t.equal(body.task, 'required')
  t.equal(body.status, 'pending')
  t.notOk('inputs' in body, 'inputs are never part of a response')
  const done = await app.tasks.wait(body.uuid)
  t.same(done.outputs, { received: { test: 'Test', optional: 'Test' } })
})

t.test('rejects a missing input with 400 naming it', async (t) => {
  const app = await build(t, { tasks: [fixture('params.ts')] })
  const res = await submit(app, 'required', {})
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'FST_TASK_API_INPUT_INVALID')
  t.equal(res.json().message, 'inputs/test is required')
})

t.test('accepts an omitted optional input; run() does not see the key', async (t) => {
  const app = await build(t, { tasks: [fixture('params.ts')] })
  const res = await submit(app, 'required', { test: 'Test' })
  t.equal(res.statusCode, 201)
  const done = await app.tasks.wait(res.json().uuid)
  t.same(done.outputs, { received: { test: 'Test' } })
  t.notOk(Object.hasOwn(done.outputs.received as object, 'optional'))
})

t.test('rejects an invalid input with 400 naming it', async (t) => {
  const app = await build(t)
  const res = await submit(app, 'hello', { name: 'x', count: 'foo' })
  t.equal(res.statusCode, 400)
  t.equal(res.json().message, 'inputs/count must be integer')
})

t.test('GET returns outputs and messages and hides internals', async (t) => {
  const app = await build(t)
  const created = (await submit(app, 'hello', { name: 'World', count: 2 })).json()
  await app.tasks.wait(created.uuid)
  for (const url of [`/tasks/${created.uuid}`, `/tasks/${created.uuid}/`]) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 200, url)
    const body = res.json()
    t.same(Object.keys(body).sort(), ['attempt', 'created', 'error', 'finished', 'messages', 'messagesDropped', 'outputs', 'progress', 'started', 'status', 'target', 'task', 'uuid'])
    t.equal(body.status, 'succeeded')
    t.same(body.outputs, { output: 'Hello World' })
    t.same(body.messages, ['step 0', 'step 1'])
    t.equal(body.progress, 2)
    t.equal(body.target, 2)
    t.equal(body.error, null)
    for (const key of ['created', 'started', 'finished']) t.equal(new Date(body[key]).toISOString(), body[key])
    t.ok(body.created <= body.started && body.started <= body.finished)
  }
})

t.test('a run that throws ends failed with its message and no stack', async (t) => {
  const app = await build(t)
  const created = (await submit(app, 'raises', { message: 'disk on fire' })).json()
  const done = await app.tasks.wait(created.uuid)
  t.equal(done.status, 'failed')
  t.equal(done.error, 'disk on fire')
  const body = (await app.inject(`/tasks/${created.uuid}`)).json()
  t.equal(body.error, 'disk on fire')
  t.notMatch(JSON.stringify(body), /at .*\.ts:\d+/, 'no stack trace in the response')
})

t.test('a message added inside run is recorded', async (t) => {
  const app = await build(t)
  const created = (await submit(app, 'seed-task', { name: 'Ada' })).json()
  await app.tasks.wait(created.uuid)
  t.same((await app.inject(`/tasks/${created.uuid}`)).json().messages, ['seed Ada'])
})

t.test('unknown task: 400 naming it', async (t) => {
  const app = await build(t)
  const res = await submit(app, 'nope', {})
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'FST_TASK_API_TASK_UNKNOWN')
  t.match(res.json().message, /"nope"/)
})

t.test('unknown or malformed uuid: 404', async (t) => {
  const app = await build(t)
  for (const url of ['/tasks/3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b', '/tasks/not-a-uuid', '/tasks/not-a-uuid/', '/tasks/%00', '/tasks/' + 'a'.repeat(100)]) {
    const res = await app.inject(url)
    t.equal(res.statusCode, 404, url)
    t.equal(res.json().code, 'FST_TASK_API_TASK_NOT_FOUND', url)
  }
  // Past Fastify's maxParamLength (100 by default) the router answers before the plugin does.
  t.equal((await app.inject('/tasks/' + 'a'.repeat(500))).statusCode, 414)
})

t.test('never a 500 for what a client sends', async (t) => {
  const app = await build(t)
  const cases: Array<[string, string, string, number, string]> = [
    ['malformed JSON', 'application/json', '{"task": "hello", ', 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['empty body', 'application/json', '', 400, 'FST_ERR_CTP_EMPTY_JSON_BODY'],
    ['body is an array', 'application/json', '[1,2]', 400, 'FST_TASK_API_BODY_INVALID'],
    ['body is a string', 'application/json', '"hello"', 400, 'FST_TASK_API_BODY_INVALID'],
    ['body is null', 'application/json', 'null', 400, 'FST_TASK_API_BODY_INVALID'],
    ['task is missing', 'application/json', '{"inputs": {}}', 400, 'FST_TASK_API_BODY_INVALID'],
    ['task is a number', 'application/json', '{"task": 5}', 400, 'FST_TASK_API_BODY_INVALID'],
    ['task is an object', 'application/json', '{"task": {"name": "hello"}}', 400, 'FST_TASK_API_BODY_INVALID'],
    ['inputs is a string', 'application/json', '{"task": "hello", "inputs": "x"}', 400, 'FST_TASK_API_INPUT_INVALID'],
    ['inputs is an array', 'application/json', '{"task": "hello", "inputs": ["x"]}', 400, 'FST_TASK_API_INPUT_INVALID'],
    ['inputs is null', 'application/json', '{"task": "hello", "inputs": null}', 400, 'FST_TASK_API_INPUT_INVALID'],
    ['__proto__ key', 'application/json', '{"task": "hello", "inputs": {"name": "x", "__proto__": {"polluted": true}}}', 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['constructor.prototype key', 'application/json', '{"task": "hello", "inputs": {"name": "x", "constructor": {"prototype": {"polluted": true}}}}', 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['text/plain body', 'text/plain', 'task=hello', 400, 'FST_TASK_API_BODY_INVALID'],
    ['unsupported content type', 'application/xml', '<task/>', 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
  ]
  for (const [name, type, payload, status, code] of cases) {
    const res = await app.inject({ method: 'POST', url: '/tasks', headers: { 'content-type': type }, payload })
    t.equal(res.statusCode, status, name)
    t.equal(res.json().code, code, name)
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
  const ok = await submit(app, 'hello', { name: 'still up' })
  t.equal(ok.statusCode, 201, 'the server still serves')
})

t.test('a body over bodyLimit answers 413', async (t) => {
  const app = await build(t, {}, { bodyLimit: 1024 })
  const res = await submit(app, 'hello', { name: 'x'.repeat(2048) })
  t.equal(res.statusCode, 413)
})

t.test('inputs default to {} when the body has none', async (t) => {
  const app = await build(t, { tasks: [fixture('params.ts')] })
  const res = await submit(app, 'echo')
  t.equal(res.statusCode, 201)
  const done = await app.tasks.wait(res.json().uuid)
  t.same(done.outputs.keys, ['withDefault'], 'only the input with a default is set')
})

t.test('option prefix moves the routes; register prefix is ignored by fastify-plugin', async (t) => {
  const app = await build(t, { prefix: '/api/jobs' })
  const res = await submit(app, 'hello', { name: 'x' }, '/api/jobs')
  t.equal(res.statusCode, 201)
  t.equal((await app.inject(`/api/jobs/${res.json().uuid}`)).statusCode, 200)
  t.equal((await submit(app, 'hello', { name: 'x' }, '/tasks')).statusCode, 404)
})

t.test('works on a server that ignores trailing slashes', async (t) => {
  const app = await build(t, {}, { routerOptions: { ignoreTrailingSlash: true } })
  t.equal((await submit(app, 'hello', { name: 'x' }, '/tasks/')).statusCode, 201)
  t.equal((await submit(app, 'hello', { name: 'x' }, '/tasks')).statusCode, 201)
})

t.test('app.tasks: submit, get, wait, subscribe, stats, names', async (t) => {
  const app = await build(t)
  t.same([...app.tasks.names].sort(), ['bad-output', 'crash', 'hello', 'multi', 'no-outputs', 'raises', 'seed-task', 'sleep'])
  // The one child is busy, so the task is still pending when we subscribe: we see every event.
  const blocker = await app.tasks.submit('sleep', { ms: 200 })
  const created = await app.tasks.submit('hello', { name: 'api', count: '3' })
  t.equal(created.status, 'pending')
  const events: string[] = []
  const seqs: number[] = []
  const unsubscribe = app.tasks.subscribe(created.uuid, (event) => {
    events.push(event.type === 'status' ? `status:${event.status}` : event.type)
    seqs.push(event.seq)
  })
  const done = await app.tasks.wait(created.uuid)
  unsubscribe()
  t.equal(done.status, 'succeeded')
  t.same(done.outputs, { output: 'Hello api' })
  t.equal(events[0], 'status:running')
  t.equal(events.at(-1), 'status:succeeded')
  t.ok(events.includes('progress'))
  t.equal(events.filter(type => type === 'message').length, 3)
  t.same(seqs, seqs.map((_, i) => i + 1), 'seq counts up from 1 without gaps')
  t.same(await app.tasks.get(created.uuid), done)
  t.same(await app.tasks.snapshot(created.uuid), { seq: seqs.at(-1), task: done }, 'the snapshot carries the last seq')
  t.equal(await app.tasks.snapshot('3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'), undefined)
  await app.tasks.wait(blocker.uuid)
  t.equal(await app.tasks.get('3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'), undefined)
  t.same(app.tasks.stats(), { queued: 0, running: 0, subscribers: 0, streams: 0 })
  await t.rejects(app.tasks.submit('nope'), { code: 'FST_TASK_API_TASK_UNKNOWN', statusCode: 400 })
  await t.rejects(app.tasks.submit('hello', { count: 1 }), { code: 'FST_TASK_API_INPUT_INVALID', message: 'inputs/name is required' })
  await t.rejects(app.tasks.wait('3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'), { code: 'FST_TASK_API_TASK_NOT_FOUND' })
})

t.test('tasks queue FIFO when every child is busy', async (t) => {
  const app = await build(t, { concurrency: 1 })
  const first = await app.tasks.submit('sleep', { ms: 200 })
  const second = await app.tasks.submit('sleep', { ms: 1 })
  const third = await app.tasks.submit('hello', { name: 'c' })
  t.same(app.tasks.stats(), { queued: 2, running: 1, subscribers: 0, streams: 0 })
  t.equal((await app.tasks.get(second.uuid))?.status, 'pending')
  const results = await Promise.all([first, second, third].map(task => app.tasks.wait(task.uuid)))
  t.ok(results.every(result => result.status === 'succeeded'))
  const [a, b, c] = results as [typeof results[0], typeof results[0], typeof results[0]]
  t.ok((a.finished as string) <= (b.started as string) && (b.finished as string) <= (c.started as string), 'one at a time, in order')
})
