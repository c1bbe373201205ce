// The browser client's types in a page's world: DOM only, no @types/node (compiled by
// test/types.test.ts with lib ES2022 + DOM and types: []). Nothing here runs.
import TaskAPI, { createClient, TaskApiError, type TaskMap } from '../../dist/client/index.js'
import { defineTask, Type } from '../../dist/task-entry.js'

// A task module's type, as a page would import it (`import type * as tasks from …`).
declare const hello: ReturnType<typeof defineTask<{ name: ReturnType<typeof Type.String> }, { output: ReturnType<typeof Type.String> }, 'hello'>>
type basic = { hello: typeof hello }

const client = createClient<basic>({ baseURL: '/tasks', WebSocket, EventSource })
export async function page (button: HTMLButtonElement, bar: HTMLProgressElement): Promise<void> {
  button.disabled = true
  try {
    const { output } = await client.run('hello', { name: 'page' }, { onProgress: (progress, target) => { bar.max = target ?? 1; bar.value = progress ?? 0 } })
    button.textContent = output
  } catch (err) {
    if (err instanceof TaskApiError) button.title = `${err.statusCode} ${err.code ?? ''}`
  }
  await TaskAPI.run('hello', { name: 'seed' }, (json) => { bar.value = json.progress ?? 0 })
  const entries = await client.catalog()
  button.title = entries.map(entry => entry.name).join(', ')
  // @ts-expect-error TS2345 `'"nope"' is not assignable`: the client knows the task names
  await client.run('nope', {})
}
export type HelloInputs = TaskMap<basic>['hello']['inputs']
