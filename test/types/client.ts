// Type tests of the client. test/types.test.ts compiles this file with each
// ts-expect-error directive lifted and requires, on the line below each, the error it names (code
// and a fragment of the message), and no other error; `npm run typecheck` checks it too,
// with the directives in place. Nothing here runs.
import { createClient, type TaskMap, type TaskState } from '../../lib/client/index.js'
import type * as streamTasks from '../fixtures/stream.js'
import type { hello, multi, noOutputs } from '../fixtures/basic.js'

const options = { baseURL: 'http://127.0.0.1:1/tasks' }

// A module namespace: every defineTask export, by its literal name.
const client = createClient<typeof streamTasks>(options)

// A tuple of definitions, and an array mixing definitions and modules.
const picked = createClient<[typeof hello, typeof multi, typeof noOutputs]>(options)
const mixed = createClient<Array<typeof hello | typeof streamTasks>>(options)

type StreamMap = TaskMap<typeof streamTasks>
const names: Array<keyof StreamMap> = ['steps', 'flood', 'spin', 'hold']
// @ts-expect-error TS2322 `'"hello"' is not assignable`: 'hello' is not among the stream fixtures
const notThere: keyof StreamMap = 'hello'

async function typed (): Promise<void> {
  const steps: { done: number } = await client.run('steps', { steps: 3, delay: 10 }, { onProgress: (progress, target) => { void [progress, target] } })
  void steps.done

  // @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: a wrong input type: steps is an integer
  await client.run('steps', { steps: 'three', delay: 10 })

  // @ts-expect-error TS2345 `Property 'delay' is missing`: a required input is missing
  await client.run('steps', { steps: 3 })

  // @ts-expect-error TS2345 `'"stepz"' is not assignable`: an unknown task name
  await client.run('stepz', { steps: 3, delay: 10 })

  // @ts-expect-error TS2345 `'"steps"' is not assignable to parameter of type 'never'`: the inputs are required when some input is
  await client.run('steps')

  // Optional inputs may be left out, and so may inputs altogether when none is required.
  const greeting: { output: string } = await picked.run('hello', { name: 'World' })
  await picked.run('hello', { name: 'World', count: 2 })
  // @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: count is an optional integer, not a string
  await picked.run('hello', { name: 'World', count: 'two' })
  const several: { out: string, count: number } = await picked.run('multi')
  await picked.run('no-outputs')
  // @ts-expect-error TS2345 `'"steps"' is not assignable`: not in the tuple
  await picked.run('steps', { steps: 1, delay: 1 })
  void greeting
  void several

  // @ts-expect-error TS2322 `Type 'number' is not assignable to type 'string'`: outputs are typed: done is a number
  const wrongOutput: { done: string } = await client.run('steps', { steps: 1, delay: 1 })
  void wrongOutput

  await mixed.run('hello', { name: 'x' })
  await mixed.run('spin', { calls: 10 })

  // submit is checked the same way.
  const state: TaskState = await client.submit('hold', { ms: 10 })
  // @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: ms is an integer
  await client.submit('hold', { ms: '10' })
  // @ts-expect-error TS2345 `'"nope"' is not assignable`: an unknown task name
  await client.submit('nope', {})

  // list takes the task names of the map; its page holds summaries.
  const page = await client.list({ task: 'steps', status: 'succeeded', limit: 10 })
  const created: string = page.tasks[0]?.created ?? ''
  const next: string | null = page.next
  void [created, next]
  // @ts-expect-error TS2820 `'"stepz"' is not assignable`: list filters by a task the client knows
  await client.list({ task: 'stepz' })
  // @ts-expect-error TS2322 `'"done"' is not assignable`: status is a task status
  await client.list({ status: 'done' })
  const deleted: void = await client.delete(state.uuid)
  void deleted

  // The seed's call shape.
  await client.run('steps', { steps: 1, delay: 1 }, (json: TaskState) => { void json.progress }, (json) => { void json.outputs }, (err: Error) => { void err.message })
  await client.run('steps', { steps: 1, delay: 1 }, null, null, (err) => { void err })
  void state

  // An untyped client takes any name and any inputs.
  const loose = createClient(options)
  const anything: Record<string, unknown> = await loose.run('whatever', { x: 1 })
  void anything
}
