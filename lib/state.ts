import type { TaskRecord, TaskState } from './store/types.js'

/** The client's view of a record: no inputs, no internals; a copy the caller may keep. */
export function toState (record: Readonly<TaskRecord>): TaskState {
  return {
    uuid: record.uuid,
    task: record.task,
    status: record.status,
    progress: record.progress,
    target: record.target,
    outputs: record.outputs,
    messages: record.messages.slice(),
    messagesDropped: record.messagesDropped,
    attempt: record.attempt,
    created: record.created,
    started: record.started,
    finished: record.finished,
    error: record.error,
  }
}
