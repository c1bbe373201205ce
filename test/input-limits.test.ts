import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { build, fixture } from './helpers.js'

// Inputs are bounded (maxInputDepth, maxInputSize) before conversion, Ajv or a child sees
// them, on both ways in: POST /tasks and app.tasks.submit.

const tasks = [fixture('nesting.ts'), fixture('params.ts'), fixture('basic.ts')]

// Two apps for the whole file, real children in each: one with the default limits (its
// log captured), one with tight ones. A loaded machine may take long to start them.
const logged: string[] = []
let app: FastifyInstance
let tight: FastifyInstance
t.before(async () => {
  const stream = new Writable({ write (chunk, _encoding, done) { logged.push(String(chunk)); done() } })
  app = await build(t, { tasks, concurrency: 2 }, { logger: { level: 'info', stream }, pluginTimeout: 120_000 })
  tight = await build(t, { tasks, maxInputDepth: 3, maxInputSize: 1000 }, { pluginTimeout: 120_000 })
})

/** Every way a value can nest past its schema: the JSON around a chain, its containers, and the keys down to it. */
const routes = [
  { task: 'nest-object', wrap: (chain: string) => `{"deep":${chain}}`, containers: 1, keys: ['deep'] },
  { task: 'nest-record', wrap: (chain: string) => `{"deep":${chain}}`, containers: 1, keys: ['deep'] },
  { task: 'nest-unknown', wrap: (chain: string) => chain, containers: 0, keys: [] },
  { task: 'nest-any', wrap: (chain: string) => chain, containers: 0, keys: [] },
  { task: 'nest-array-object', wrap: (chain: string) => `[{"x":1},{"deep":${chain}}]`, containers: 2, keys: ['1', 'deep'] },
  { task: 'nest-array-record', wrap: (chain: string) => `[{"deep":${chain}}]`, containers: 2, keys: ['0', 'deep'] },
  { task: 'nest-array-unknown', wrap: (chain: string) => `[${chain}]`, containers: 1, keys: ['0'] },
  { task: 'nest-array-any', wrap: (chain: string) => `[1,${chain}]`, containers: 1, keys: ['1'] },
]

/** `levels` nested objects or arrays, as JSON text (JSON.stringify would overflow the stack on the deepest). */
const chains = {
  objects: { key: 'a', make: (levels: number) => '{"a":'.repeat(levels) + '1' + '}'.repeat(levels) },
  arrays: { key: '0', make: (levels: number) => '['.repeat(levels) + '1' + ']'.repeat(levels) },
}

const inputsJson = (route: typeof routes[number], chain: string) => `{"value":${route.wrap(chain)}}`

t.test('refuses inputs nested a few thousand levels deep, through every nesting route, with 400 naming the limit and the path', async (t) => {
  for (const route of routes) {
    for (const [kind, chain] of Object.entries(chains)) {
      const inputs = inputsJson(route, chain.make(3000))
      // The path runs to the first container past level 32: "inputs" is level 1, "value" level 2.
      const keys = ['inputs', 'value', ...route.keys]
      while (keys.length < 33) keys.push(chain.key)
      const message = `${keys.join('/')} is nested deeper than maxInputDepth (32 levels)`

      const res = await app.inject({ method: 'POST', url: '/tasks', headers: { 'content-type': 'application/json' }, payload: `{"task":"${route.task}","inputs":${inputs}}` })
      t.equal(res.statusCode, 400, `${route.task}, ${kind}: REST`)
      t.same(res.json(), { statusCode: 400, code: 'FST_TASK_API_INPUT_TOO_DEEP', error: 'Bad Request', message }, `${route.task}, ${kind}: REST`)

      await t.rejects(app.tasks.submit(route.task, JSON.parse(inputs)), { code: 'FST_TASK_API_INPUT_TOO_DEEP', statusCode: 400, message },
        `${route.task}, ${kind}: app.tasks.submit`)
    }
  }
  t.same(app.tasks.stats(), { queued: 0, running: 0, subscribers: 0, streams: 0 }, 'nothing was queued')

  // The server is up, and every route still runs a task nested right up to the limit.
  for (const route of routes) {
    for (const [kind, chain] of Object.entries(chains)) {
      const atLimit = 32 - 1 - route.containers // the inputs object is level 1, value's containers next
      const over = await app.inject({ method: 'POST', url: '/tasks', headers: { 'content-type': 'application/json' }, payload: `{"task":"${route.task}","inputs":${inputsJson(route, chain.make(atLimit + 1))}}` })
      t.equal(over.json().code, 'FST_TASK_API_INPUT_TOO_DEEP', `${route.task}, ${kind}: one level past the limit`)
      const res = await app.inject({ method: 'POST', url: '/tasks', headers: { 'content-type': 'application/json' }, payload: `{"task":"${route.task}","inputs":${inputsJson(route, chain.make(atLimit))}}` })
      t.equal(res.statusCode, 201, `${route.task}, ${kind}: at the limit`)
      const done = await app.tasks.wait(res.json().uuid)
      t.equal(done.status, 'succeeded', `${route.task}, ${kind}: at the limit`)
      t.same(done.outputs, { depth: 31 }, `${route.task}, ${kind}: the child got all 31 levels under inputs`)
    }
  }
})

t.test('maxInputDepth sets the limit, and a cyclic value from server code is refused as too deep', async (t) => {
  const res = await tight.inject({ method: 'POST', url: '/tasks', payload: { task: 'nest-unknown', inputs: { value: { 'a\nb': [{}] } } } })
  t.equal(res.statusCode, 400)
  t.equal(res.json().message, 'inputs/value/a\\u000ab/0 is nested deeper than maxInputDepth (3 levels)', 'the path, its control characters escaped')
  const ok = await tight.inject({ method: 'POST', url: '/tasks', payload: { task: 'nest-unknown', inputs: { value: { a: 1 } } } })
  t.equal(ok.statusCode, 201)
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  await t.rejects(tight.tasks.submit('nest-unknown', { value: cyclic }), { code: 'FST_TASK_API_INPUT_TOO_DEEP', message: 'inputs/value/self/self is nested deeper than maxInputDepth (3 levels)' })
})

t.test('refuses inputs over maxInputSize bytes of JSON with 413 naming the limit, counting strings in UTF-8', async (t) => {
  const post = (inputs: unknown) => tight.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs } })
  // {"name":"…"} is 11 bytes around the name.
  t.equal(JSON.stringify({ name: 'x'.repeat(989) }).length, 1000)
  t.equal((await post({ name: 'x'.repeat(989) })).statusCode, 201, 'exactly 1000 bytes')
  const over = await post({ name: 'x'.repeat(990) })
  t.equal(over.statusCode, 413)
  t.same(over.json(), { statusCode: 413, code: 'FST_TASK_API_INPUT_TOO_LARGE', error: 'Payload Too Large', message: 'inputs are larger than maxInputSize (1000 bytes as JSON)' })
  t.equal((await post({ name: 'é'.repeat(494) })).statusCode, 201, '494 two-byte characters: 999 bytes')
  t.equal((await post({ name: 'é'.repeat(495) })).statusCode, 413, '495 two-byte characters: 1001 bytes')
  t.equal((await post({ name: 'x', count: 1, extra: 'y'.repeat(2000) })).statusCode, 413, 'undeclared keys count too: they are measured before they are dropped')
  t.equal((await post({ name: 'x', list: Array(600).fill(1) })).statusCode, 413, 'a wide array')
  await t.rejects(tight.tasks.submit('hello', { name: 'x'.repeat(990) }), { code: 'FST_TASK_API_INPUT_TOO_LARGE', statusCode: 413 })
  const done = await tight.tasks.wait((await tight.tasks.submit('hello', { name: 'after', count: 1 })).uuid)
  t.same(done.outputs, { output: 'Hello after' }, 'the next task succeeds')
})

t.test('maxInputSize defaults to 256 KiB', async (t) => {
  const post = (name: string) => app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name } } })
  t.equal((await post('x'.repeat(256 * 1024 - 11))).statusCode, 201)
  const res = await post('x'.repeat(256 * 1024 - 10))
  t.equal(res.statusCode, 413)
  t.equal(res.json().message, 'inputs are larger than maxInputSize (262144 bytes as JSON)')
})

t.test('refuses Infinity, 1e309 and NaN for numbers with 400 naming the input', async (t) => {
  const post = (inputs: string) => app.inject({ method: 'POST', url: '/tasks', headers: { 'content-type': 'application/json' }, payload: `{"task":"echo","inputs":${inputs}}` })
  for (const [inputs, message] of [
    ['{"number":1e309}', 'inputs/number must be a finite number'],
    ['{"int":-1e400}', 'inputs/int must be a finite number'],
    ['{"dict":{"deep":[1,1e999]}}', 'inputs/dict/deep/1 must be a finite number'],
    ['{"number":"1e309"}', 'inputs/number must be number'],
    ['{"number":"-1e999"}', 'inputs/number must be number'],
    ['{"number":"Infinity"}', 'inputs/number must be number'],
    ['{"number":"NaN"}', 'inputs/number must be number'],
    ['{"int":"1e309"}', 'inputs/int must be integer'],
    ['{"string":1e309}', 'inputs/string must be a finite number'],
  ] as const) {
    const res = await post(inputs)
    t.equal(res.statusCode, 400, inputs)
    t.equal(res.json().code, 'FST_TASK_API_INPUT_INVALID', inputs)
    t.equal(res.json().message, message, inputs)
  }
  for (const [inputs, message] of [
    [{ number: Infinity }, 'inputs/number must be a finite number'],
    [{ number: NaN }, 'inputs/number must be a finite number'],
    [{ dict: { a: -Infinity } }, 'inputs/dict/a must be a finite number'],
  ] as const) {
    await t.rejects(app.tasks.submit('echo', inputs), { code: 'FST_TASK_API_INPUT_INVALID', message }, message)
  }
  const res = await post('{"number":"1e308","int":"-1e3"}')
  t.equal(res.statusCode, 201, 'the largest finite ones still convert')
  const done = await app.tasks.wait(res.json().uuid)
  t.same((done.outputs.inputs as Record<string, unknown>).number, 1e308)
  t.same((done.outputs.inputs as Record<string, unknown>).int, -1000)
})

t.test('an unknown task name is cut to a short prefix, control characters escaped, in the answer and the log', async (t) => {
  const lines = logged
  lines.length = 0
  const forged = 'evil\n{"level":50,"msg":"forged"}\u001b[31m'
  const name = forged + 'x'.repeat(100_000)
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: name } })
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'FST_TASK_API_TASK_UNKNOWN')
  const shown = 'evil\\u000a{"level":50,"msg":"forged"}\\u001b[31m' + 'x'.repeat(64 - forged.length) + '…'
  t.equal(res.json().message, `task "${shown}" is not registered`)
  await t.rejects(app.tasks.submit(name, {}), { code: 'FST_TASK_API_TASK_UNKNOWN', message: `task "${shown}" is not registered` })
  const refusals = lines.filter(line => line.includes('is not registered'))
  t.ok(refusals.length > 0, 'the refusal is logged')
  for (const line of refusals) {
    t.ok(line.length < 2000, 'the log line is short')
    t.notOk(line.includes('x'.repeat(100)), 'the name is cut in the log')
    t.doesNotThrow(() => JSON.parse(line), 'one JSON line: no forged line')
  }
  t.notOk(lines.some(line => line.includes('"msg":"forged"') && JSON.parse(line).msg === 'forged'), 'no forged log record')
})

t.test('register refuses bad maxInputSize and maxInputDepth values, naming them', async (t) => {
  for (const [options, message] of [
    [{ maxInputSize: 0 }, 'options.maxInputSize must be a positive integer number of bytes, got 0'],
    [{ maxInputSize: '1mb' }, 'options.maxInputSize must be a positive integer number of bytes, got "1mb"'],
    [{ maxInputDepth: 0 }, 'options.maxInputDepth must be an integer from 1 to 1000, got 0'],
    [{ maxInputDepth: 1001 }, 'options.maxInputDepth must be an integer from 1 to 1000, got 1001'],
    [{ maxInputDepth: 2.5 }, 'options.maxInputDepth must be an integer from 1 to 1000, got 2.5'],
  ] as const) {
    await t.rejects(build(t, { tasks, ...options } as object), { code: 'FST_TASK_API_OPT_INVALID', message }, message)
  }
})

t.test('a uuid echoed in a 404 has its control characters escaped', async (t) => {
  const res = await app.inject('/tasks/x%0A%1B%5B31mforged')
  t.equal(res.statusCode, 404)
  t.equal(res.json().message, 'task x\\u000a\\u001b[31mforged not found')
})
