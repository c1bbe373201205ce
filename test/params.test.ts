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

t.test('required and optional; undeclared inputs are dropped; defaults apply', async (t) => {
  const res = await submit(app, 'echo', { int: 1, extra: 'dropped', __proto__: 'x' })
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
