/**
 * fastify-task-api/redis: what runs on Redis. Loaded only by apps that use it (ioredis,
 * and BullMQ for the runner, are optional peer dependencies).
 */
export { RedisStore, type RedisStoreOptions } from './store.js'
export { RedisBus, type RedisBusOptions } from './bus.js'
export type { RedisConnection } from './connection.js'
