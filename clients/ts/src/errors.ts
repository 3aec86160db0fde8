import type { ErrorCode } from './frames.js';

/**
 * An error reported by chatd (an `error` frame or an HTTP error body), or by the SDK itself
 * (`code` `disconnected`, `timeout`, `too_large`, `signed_out`).
 */
export class ChatError extends Error {
  /** The stable code (docs/PROTOCOL.md "Error codes"), or an SDK code. */
  readonly code: ErrorCode | 'disconnected' | 'signed_out';
  /** Whether sending the same request again can help. */
  readonly retry: boolean;
  /** The HTTP status, for errors of the HTTP API. */
  readonly status?: number;

  constructor(
    code: ErrorCode | 'disconnected' | 'signed_out',
    message: string,
    retry: boolean,
    status?: number,
  ) {
    super(message);
    this.name = 'ChatError';
    this.code = code;
    this.retry = retry;
    this.status = status;
  }
}
