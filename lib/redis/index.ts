/**
 * fastify-task-api/redis: what runs on Redis. Loaded only by apps that use it (ioredis,
 * and BullMQ for the runner, are optional peer dependencies).
 */
export { RedisStore, RedisStoreLockedError, type RedisStoreOptions } from './store.js'
export type { RedisConnection } from './connection.js'
export { startWorker, type WorkerOptions, type TaskWorker } from './worker.js'
