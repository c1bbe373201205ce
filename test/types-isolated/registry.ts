// app.tasks typed for the whole app by declaring the task modules in TaskRegistry
// (test/types.test.ts compiles this file on its own: the declaration is global). Nothing
// here runs.
import Fastify from 'fastify'
import taskApi from '../../lib/index.js'
import type * as basic from '../fixtures/basic.js'

declare module '../../lib/index.js' {
  interface TaskRegistry { tasks: typeof basic }
}

const app = Fastify()
await app.register(taskApi, { tasks: [new URL('../fixtures/basic.js', import.meta.url)] })
const state = await app.tasks.submit('hello', { name: 'x' })
const done = await app.tasks.wait(state)
if (done.status === 'succeeded') {
  const output: string = done.outputs.output
  void output
}
const names: ReadonlyArray<'hello' | 'multi' | 'no-outputs' | 'sleep' | 'seed-task' | string> = app.tasks.names
void names
// @ts-expect-error TS2345 `'"helo"' is not assignable`: a typo in a task name is a compile error
await app.tasks.submit('helo', { name: 'x' })
// @ts-expect-error TS2322 `'boolean' is not assignable to type 'string'`: and a wrong input type
await app.tasks.submit('hello', { name: true })
