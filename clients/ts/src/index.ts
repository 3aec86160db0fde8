/**
 * The chatd TypeScript SDK: typed frames ({@link ./frames}), a reconnecting session
 * ({@link ChatClient}) and the HTTP API ({@link Api}).
 */
export * from './frames.js';
export * from './errors.js';
export * from './client.js';
export * from './http.js';
export { Emitter } from './emitter.js';
