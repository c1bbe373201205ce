import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, fixture, submit } from './helpers.js'

// Ports of django-task-api's tests/test_params.py: each parameter's conversions and
// refusals, through the real route and a real child process.

let app: FastifyInstance
t.before(async () => {
  app = await build(t, { tasks: [fixture('params.ts')], concurrency: 2 })
})

async function converted (inputs: Record<string, unknown>): Promise<unknown> {
  const res = await submit(app, 'echo', inputs)
  if (res.statusCode !== 201) throw new Error(`expected 201, got ${res.statusCode}: ${res.body}`)
  const done = await app.tasks.wait(res.json().uuid)
  const received = { ...(done.outputs.inputs as Record<string, unknown>) }
  delete received.withDefault
  return received
}

async function rejected (t: Test, inputs: Record<string, unknown>, message: string): Promise<void> {
  const res = await submit(app, 'echo', inputs)
  t.equal(res.statusCode, 400, JSON.stringify(inputs))
  t.equal(res.json().message, message, JSON.stringify(inputs))
}


t.test('Integer: numbers and numeric strings; refuses words and fractions', async (t) => {
  t.same(await converted({ int: 5 }), { int: 5 })
  t.same(await converted({ int: '5' }), { int: 5 })
  t.same(await converted({ int: '6' }), { int: 6 })
  t.same(await converted({ int: ' -12 ' }), { int: -12 })
  t.same(await converted({ int: '1e3' }), { int: 1000 })
  await rejected(t, { int: 'not a number' }, 'inputs/int must be integer')
  await rejected(t, { int: '' }, 'inputs/int must be integer')
  // The seed truncates 5.2 to 5; silently dropping part of a value hides client bugs, so we refuse it.
  await rejected(t, { int: 5.2 }, 'inputs/int must be integer')
  await rejected(t, { int: '5.2' }, 'inputs/int must be integer')
  await rejected(t, { int: true }, 'inputs/int must be integer')
  await rejected(t, { int: null }, 'inputs/int must be integer')
  await rejected(t, { int: [5] }, 'inputs/int must be integer')
})

t.test('Number and Float: numbers and numeric strings', async (t) => {
  t.same(await converted({ number: 5 }), { number: 5 })
  t.same(await converted({ number: 5.0 }), { number: 5 })
  t.same(await converted({ number: '5' }), { number: 5 })
  t.same(await converted({ number: '5.3' }), { number: 5.3 })
  t.same(await converted({ float: 5.2 }), { float: 5.2 })
  t.same(await converted({ float: 5 }), { float: 5 })
  t.same(await converted({ float: '.5' }), { float: 0.5 })
  await rejected(t, { number: 'foo' }, 'inputs/number must be number')
  await rejected(t, { number: '5 apples' }, 'inputs/number must be number')
  await rejected(t, { number: 'Infinity' }, 'inputs/number must be number')
  await rejected(t, { float: {} }, 'inputs/float must be number')
})

t.test('String: strings, and numbers become strings; refuses lists and objects', async (t) => {
  t.same(await converted({ string: 'foo' }), { string: 'foo' })
  t.same(await converted({ string: 5 }), { string: '5' })
  t.same(await converted({ string: 5.5 }), { string: '5.5' })
  t.same(await converted({ string: '' }), { string: '' })
  await rejected(t, { string: [1, 2, 3] }, 'inputs/string must be string')
  await rejected(t, { string: { a: 1 } }, 'inputs/string must be string')
  await rejected(t, { string: true }, 'inputs/string must be string')
  await rejected(t, { string: null }, 'inputs/string must be string')
})

t.test('Boolean: true/false, "true"/"false", 1/0 and nothing else', async (t) => {
  t.same(await converted({ boolean: true }), { boolean: true })
  t.same(await converted({ boolean: false }), { boolean: false })
  t.same(await converted({ boolean: 'true' }), { boolean: true })
  t.same(await converted({ boolean: 'false' }), { boolean: false })
  t.same(await converted({ boolean: 1 }), { boolean: true })
  t.same(await converted({ boolean: 0 }), { boolean: false })
  for (const value of ['foo', 2, -1, 'TRUE', 'yes', '1', '', null, [true], {}]) {
    await rejected(t, { boolean: value }, 'inputs/boolean must be boolean')
  }
})

t.test('List: items converted; a single value becomes a one-element list', async (t) => {
  t.same(await converted({ list: ['1', 2] }), { list: ['1', '2'] })
  t.same(await converted({ list: 2 }), { list: ['2'] })
  t.same(await converted({ list: 'one' }), { list: ['one'] })
  t.same(await converted({ list: [] }), { list: [] })
  t.same(await converted({ numbers: ['1', 2, '3'] }), { numbers: [1, 2, 3] })
  t.same(await converted({ numbers: '4' }), { numbers: [4] })
  await rejected(t, { numbers: [1, 'two'] }, 'inputs/numbers/1 must be integer')
  await rejected(t, { list: [{}] }, 'inputs/list/0 must be string')
})

t.test('Dict: objects pass through; other values are refused', async (t) => {
  t.same(await converted({ dict: { 1: 'one' } }), { dict: { 1: 'one' } })
  t.same(await converted({ dict: { nested: { deep: [1, 2] } } }), { dict: { nested: { deep: [1, 2] } } })
  await rejected(t, { dict: 5 }, 'inputs/dict must be object')
  await rejected(t, { dict: 'x' }, 'inputs/dict must be object')
  // The seed's DictParameter also takes a list; a TypeBox Record does not (use a Union for both).
  await rejected(t, { dict: [1, 2, 3] }, 'inputs/dict must be object')
})

t.test('Object: declared properties are converted and checked', async (t) => {
  t.same(await converted({ point: { x: '1.5', y: 2 } }), { point: { x: 1.5, y: 2 } })
  await rejected(t, { point: { x: 1 } }, 'inputs/point/y is required')
  await rejected(t, { point: { x: 'left', y: 1 } }, 'inputs/point/x must be number')
})

t.test('required and optional; undeclared inputs are refused, naming them; defaults apply', async (t) => {
  const typo = await submit(app, 'required', { tset: 'x' })
  t.equal(typo.statusCode, 400)
  t.same(typo.json(), {
    statusCode: 400,
    code: 'FST_TASK_API_INPUT_INVALID',
    error: 'Bad Request',
    message: 'inputs/test is required; inputs/tset is not a declared input of "required" (it declares: test, optional)',
  }, 'a typo shows: the missing input and the undeclared one')
  const many = await submit(app, 'echo', { int: 1, a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7 })
  t.equal(many.statusCode, 400)
  t.match(many.json().message, /^inputs\/a, inputs\/b, inputs\/c, inputs\/d, inputs\/e \(and 2 more\) are not declared inputs of "echo" \(it declares: int, number, /, 'the first five named, then how many more')
  await t.rejects(app.tasks.submit('required', { test: 'x', extra: 1 }), { code: 'FST_TASK_API_INPUT_INVALID', message: 'inputs/extra is not a declared input of "required" (it declares: test, optional)' }, 'app.tasks.submit refuses them too')

  const res = await submit(app, 'echo', { int: 1 })
  t.equal(res.statusCode, 201)
  const done = await app.tasks.wait(res.json().uuid)
  t.same(done.outputs.inputs, { int: 1, withDefault: 7 })
  t.same(done.outputs.keys, ['int', 'withDefault'])
  t.same(await converted({ nullable: null }), { nullable: null })
  t.same(await converted({ nullable: '3' }), { nullable: 3 }, 'a union converts with the branch that takes the value')
  await rejected(t, { nullable: 'three' }, 'inputs/nullable must be integer')
  await rejected(t, { email: 'not-an-email' }, 'inputs/email must match format "email"')
  const required = await submit(app, 'required', { optional: 'x' })
  t.equal(required.statusCode, 400)
  t.equal(required.json().message, 'inputs/test is required')
})

t.test('every failing input is reported, one message each, the first five then how many more', async (t) => {
  await rejected(t, { int: 'x', number: 'y' }, 'inputs/int must be integer; inputs/number must be number')
  const required = await submit(app, 'required', { optional: true })
  t.equal(required.json().message, 'inputs/test is required; inputs/optional must be string', 'a missing one and a wrong one')
  // Within one input, its first failure (a hostile list of 60,000 wrong items costs one check, not 60,000).
  await rejected(t, { numbers: ['1', 'two', 3, 'four'] }, 'inputs/numbers/1 must be integer')
  await rejected(t, { numbers: Array.from({ length: 50_000 }, () => 'x'), int: 'y' }, 'inputs/int must be integer; inputs/numbers/0 must be integer')
  await rejected(t, { int: 'a', number: 'b', float: 'c', boolean: 'd', point: { x: 'e', y: 'f' }, nullable: 'g' },
    'inputs/int must be integer; inputs/number must be number; inputs/float must be number; inputs/boolean must be boolean; inputs/point/x must be number; and 1 more')
  // A union: its first branch speaks for the field, once.
  await rejected(t, { nullable: 'three' }, 'inputs/nullable must be integer')
})

t.test('a wrong JSON type is reported as a type error, not as the failure of the converted value', async (t) => {
  // The seed turns a number into a string for a string input: kept, when the string passes.
  t.same(await converted({ string: 5, email: 'a@b.co' }), { string: '5', email: 'a@b.co' })
  await rejected(t, { email: 5 }, 'inputs/email must be string, got number')
  // A single value becomes a list of one: kept when it passes, a type error when it does not.
  t.same(await converted({ numbers: '7' }), { numbers: [7] })
  await rejected(t, { numbers: 'seven' }, 'inputs/numbers must be array, got string')
  // A numeric string stays a number's way of being written: its range errors stay range errors.
  await rejected(t, { point: { x: 1, y: true } }, 'inputs/point/y must be number')
})

t.test('undeclaredInputs: \'strip\' drops them (as earlier versions did); other values are refused', async (t) => {
  const stripping = await build(t, { tasks: [fixture('params.ts')], concurrency: 1, undeclaredInputs: 'strip' })
  const res = await submit(stripping, 'echo', { int: 1, extra: 'dropped', __proto__: 'x' })
  t.equal(res.statusCode, 201)
  const done = await stripping.tasks.wait(res.json().uuid)
  t.same(done.outputs.inputs, { int: 1, withDefault: 7 })
  t.same(done.outputs.keys, ['int', 'withDefault'])
  await t.rejects(build(t, { tasks: [fixture('params.ts')], undeclaredInputs: 'drop' as never }), { code: 'FST_TASK_API_OPT_INVALID', message: /undeclaredInputs/ })
})

t.test('schemas an attack run broke: recursive, Object.prototype names, Record keys with newlines, unions of objects, long or hostile keys', async (t) => {
  // Registered twice in one process: a recursive schema's $id is compiled once per app.
  const edges = await build(t, { tasks: [fixture('params-edges.ts')], concurrency: 1 })
  const again = await build(t, { tasks: [fixture('params-edges.ts')], concurrency: 1 })
  const post = async (app: FastifyInstance, task: string, inputs: unknown) => await submit(app, task, inputs)
  const tree = { id: 'a', children: [{ id: 'b', children: [] }] }
  const ok = await post(again, 'tree', { tree })
  t.equal(ok.statusCode, 201, 'a recursive schema registers (twice in one process) and validates')
  t.match(await again.tasks.wait(ok.json().uuid), { status: 'succeeded', outputs: { tree } })
  t.equal((await post(edges, 'tree', { tree: { id: 'a', children: [{ id: 5, children: [] }] } })).json().message, 'inputs/tree/children/0/id must be string')

  const none = await post(edges, 'prototype-names', {})
  t.equal(none.statusCode, 201, 'inputs named valueOf, constructor, toString may be left out')
  t.same((await edges.tasks.wait(none.json().uuid)).outputs.received, { valueOf: 3 }, 'and get their default')
  t.equal((await post(edges, 'prototype-names', { nested: {} })).statusCode, 201, 'nested too')
  t.equal((await post(edges, 'prototype-names', { toString: 'x' })).json().message, 'inputs/toString must be integer', 'only what was sent is named')

  const newline = await post(edges, 'shapes', { dict: { 'a\nb': 'not an int' } })
  t.equal(newline.statusCode, 400, 'a Record key with a newline does not escape the value\'s schema')
  t.equal(newline.json().message, 'inputs/dict/a\\u000ab must be integer', 'and the key is escaped in the message')
  t.equal((await post(edges, 'shapes', { u: { a: 'x' }, w: 'q' })).json().message, 'inputs/u/b is required; inputs/w must be integer', 'a union of objects is named once (its first branch\'s first failure), and the next input still shows')
  const long = 'k'.repeat(200_000)
  const hostile = await post(edges, 'shapes', { strict: { x: 1, [long]: 1 }, dict: { [`x\t\u001b[2J\u202eevil`]: 'y' } })
  t.equal(hostile.statusCode, 400)
  t.equal(hostile.json().message, `inputs/dict/x\\u0009\\u001b[2J\\u202eevil must be integer; inputs/strict/${'k'.repeat(32)}… is not allowed`, 'keys in nested paths are cut and escaped')
})
