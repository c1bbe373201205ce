/*
 * `fastify-task-api/task`: what a task module needs, without fastify. Task modules
 * that import from here keep the child processes small; importing the package root
 * works too but loads fastify into every child.
 */
export { defineTask, Task, TaskError } from './task.js'
export type { Backoff, TaskContext, TaskDefinition, TaskOptions, TaskInputs, TaskResult, TaskOutputs } from './task.js'
export { Type } from '@sinclair/typebox'
export type { Static, TSchema, TProperties } from '@sinclair/typebox'
