// Type tests of the task API. test/types.test.ts compiles this file with each
// ts-expect-error directive lifted and requires, on the line below each, the error it names (code
// and a fragment of the message), and no other error; `npm run typecheck` checks it too,
// with the directives in place. Nothing here runs.
import Fastify from 'fastify'
import taskApi, { defineTask, Task, TaskError, Type, type Static, type TaskState, type TaskEvent } from '../../lib/index.js'

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
  run ({ name }: Static<ReturnType<typeof Type.Object<typeof inputs>>>): string {
    this.setTarget(1)
    this.setProgress(1)
    // @ts-expect-error TS2345 `'string' is not assignable to parameter of type 'number'`: setProgress takes a number
    this.setProgress('1')
    return name
  }
}

// @ts-expect-error TS2654 `'name', 'run'`: a Task subclass must implement run and name
class Incomplete extends Task {}

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
