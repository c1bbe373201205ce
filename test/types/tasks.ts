// Type tests of the task API. test/types.test.ts compiles this file with each
// ts-expect-error directive lifted and requires, on the line below each, the error it names (code
// and a fragment of the message), and no other error; `npm run typecheck` checks it too,
// with the directives in place. Nothing here runs.
import Fastify from 'fastify'
import taskApi, { defineTask, Task, TaskError, Type, typedTasks, type Static, type TaskInputs, type TaskMap, type TaskState, type TaskEvent } from '../../lib/index.js'
import type * as basicTasks from '../fixtures/basic.js'

const typed = defineTask({
  name: 'typed',
  inputs: { name: Type.String(), count: Type.Optional(Type.Integer()), tags: Type.Array(Type.String()) },
  outputs: { output: Type.String() },
  run ({ name, count = 5, tags }, task) {
    const text: string = name
    const n: number = count
    const first: string | undefined = tags[0]
    // @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: name is a string, not a number
    const wrong: number = name
    task.setTarget(n)
    task.incProgress()
    task.addMessage(`${first ?? ''}${String(wrong)}`)
    const aborted: boolean = task.signal.aborted
    return aborted ? text : `Hello ${text}`
  },
})

defineTask({
  name: 'one-output',
  outputs: { output: Type.String() },
  // @ts-expect-error TS2322 `Type 'number' is not assignable to type 'string | Promise<string>'`: with one output, run returns that output's value
  run () {
    return 5
  },
})

defineTask({
  name: 'async-one-output',
  outputs: { output: Type.Integer() },
  async run () {
    return 5
  },
})

defineTask({
  name: 'several-outputs',
  outputs: { out: Type.String(), count: Type.Integer() },
  run () {
    return { out: 'Foo', count: 5 }
  },
})

defineTask({
  name: 'several-outputs-missing',
  outputs: { out: Type.String(), count: Type.Integer() },
  // @ts-expect-error TS2322 `Property 'count' is missing`: with several outputs, run returns an object with each of them
  run () {
    return { out: 'Foo' }
  },
})

defineTask({ name: 'no-outputs', run () { return 42 } })

defineTask({
  name: 'unknown-input',
  inputs: { a: Type.String() },
  // @ts-expect-error TS2339 `Property 'b' does not exist`: run cannot read an input that is not declared
  run ({ b }) { return b },
})

// @ts-expect-error TS2345 `Property 'name' is missing`: a task needs a name
defineTask({ run () {} })

const inputs = { name: Type.String() }
class SeedStyle extends Task {
  name = 'seed-style'
  override inputs = inputs
  run ({ name }: TaskInputs<typeof inputs>): string {
    this.setTarget(1)
    this.setProgress(1)
    // @ts-expect-error TS2345 `'string' is not assignable to parameter of type 'number'`: setProgress takes a number
    this.setProgress('1')
    return name
  }
}

// @ts-expect-error TS2654 `'name', 'run'`: a Task subclass must implement run and name
class Incomplete extends Task {}

// TaskInputs is Static<...> of the object of inputs: the long form still works.
const longForm: Static<ReturnType<typeof Type.Object<typeof inputs>>> = { name: 'x' } satisfies TaskInputs<typeof inputs>
void longForm

// A Task subclass with a literal name joins task maps (the client's, app.tasks'); one
// with a plain string name does not.
const literalInputs = { size: Type.Integer(), label: Type.Optional(Type.String()) }
class Literal extends Task {
  name = 'literal' as const
  override inputs = literalInputs
  override outputs = { area: Type.Integer() }
  run ({ size }: TaskInputs<typeof literalInputs>): number { return size * size }
}
type ClassMap = TaskMap<[typeof Literal, typeof SeedStyle]>
const classInputs: ClassMap['literal']['inputs'] = { size: 2 }
const classOutputs: ClassMap['literal']['outputs'] = { area: 4 }
// @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: size is an integer
const classWrong: ClassMap['literal']['inputs'] = { size: 'two' }
// @ts-expect-error TS2339 `Property 'seed-style' does not exist`: a plain string name cannot be a key
type NoKey = ClassMap['seed-style']
void [classInputs, classOutputs, classWrong]

async function decorated (): Promise<void> {
  const app = Fastify()
  await app.register(taskApi, { tasks: [new URL('../fixtures/basic.ts', import.meta.url)] })
  const state: TaskState = await app.tasks.submit('hello', { name: 'x' })
  const done: TaskState = await app.tasks.wait(state.uuid)
  const stop: () => void = app.tasks.subscribe(done.uuid, (event: TaskEvent) => {
    if (event.type === 'progress') { const p: number | null = event.progress; void p }
    // @ts-expect-error TS2339 `Property 'progress' does not exist`: a message event has no progress
    if (event.type === 'message') { void event.progress }
  })
  stop()
  // Typed from the task modules: names, inputs and outputs checked.
  const tasks = typedTasks<typeof basicTasks>(app.tasks)
  const submitted = await tasks.submit('hello', { name: 'x', count: 2 })
  const named: 'hello' = submitted.task
  const finished = await tasks.wait(submitted)
  if (finished.status === 'succeeded') {
    const output: string = finished.outputs.output
    // @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: the output is a string
    const wrongOutput: number = finished.outputs.output
    void [output, wrongOutput]
  } else {
    const maybe: string | undefined = finished.outputs.output
    void maybe
  }
  const again = await tasks.get(submitted)
  void [named, again?.outputs, await tasks.submit('multi'), await tasks.cancel(submitted)]
  // @ts-expect-error TS2345 `'"nope"' is not assignable`: no task has this name
  await tasks.submit('nope', {})
  // @ts-expect-error TS2322 `'number' is not assignable to type 'string'`: name is a string
  await tasks.submit('hello', { name: 5 })
  // @ts-expect-error TS2345 `Property 'name' is missing`: hello needs a name
  await tasks.submit('hello', {})
  // Untyped, app.tasks takes any name (the server checks at run time) and gives TaskState.
  const loose: TaskState | undefined = await app.tasks.get('3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b')
  void loose
  // @ts-expect-error TS2769 `Argument of type '{}' is not assignable`: the options need tasks
  await app.register(taskApi, {})
  // @ts-expect-error TS2769 `Type 'string' is not assignable to type 'number'`: concurrency is a number
  await app.register(taskApi, { tasks: [], concurrency: '2' })
}

export const retried = defineTask({
  name: 'retried',
  retries: 2,
  backoff: { type: 'exponential', delay: 100, maxDelay: 1000 },
  run (_inputs, task) {
    const attempt: number = task.attempt
    if (attempt < 2) throw new TaskError('again')
    throw new TaskError('give up', { retry: false, cause: new Error('root') })
  },
})

// @ts-expect-error TS2322 `'"linear"' is not assignable`: backoff types are 'fixed' or 'exponential'
defineTask({ name: 'bad-backoff', backoff: { type: 'linear', delay: 5 }, run () {} })

// @ts-expect-error TS2322 `'string' is not assignable to type 'number'`: retries is a number
defineTask({ name: 'bad-retries', retries: 'twice', run () {} })
