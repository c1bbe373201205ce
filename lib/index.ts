import { taskApi } from './plugin.js'

export { taskApi }
export default taskApi
export { defineTask, Task, TaskError } from './task.js'
export type { Backoff, TaskContext, TaskDefinition, TaskOptions, TaskInputs, TaskResult, TaskOutputs } from './task.js'
export { Type } from '@sinclair/typebox'
export type { Static, TSchema, TProperties } from '@sinclair/typebox'
export * from './errors.js'
export type { TaskApiOptions } from './options.js'
export type { TaskApi } from './types.js'
export type { TaskStats, SubmitOptions } from './service.js'
export type { AuthStrategy, AuthorizeContext, AccessOptions } from './access.js'
export type { TaskEvent, ProgressEvent, MessageEvent, StatusEvent, TaskListener } from './events.js'
export { MemoryStore } from './store/memory.js'
export type { MemoryStoreOptions } from './store/memory.js'
export type { Store, TaskRecord, TaskState, TaskStatus, TaskSummary, RecordPatch, UpdateFence, ListFilter, ListPage, FinalStatus } from './store/types.js'
export { InvalidCursorError, StoreUnavailableError } from './store/types.js'
