/** A minimal typed event emitter: `on` returns the function that unsubscribes. */
export class Emitter<Events extends Record<string, unknown>> {
  private handlers = new Map<keyof Events, Set<(v: never) => void>>();

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof Events>(event: K, fn: (v: Events[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(fn as (v: never) => void);
    return () => set.delete(fn as (v: never) => void);
  }

  /** Calls every handler of an event; a throwing handler does not stop the others. */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const fn of [...(this.handlers.get(event) ?? [])]) {
      try {
        (fn as (v: Events[K]) => void)(value);
      } catch (e) {
        console.error('chatd: event handler failed', e);
      }
    }
  }
}
