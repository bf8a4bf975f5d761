/** Every error the package raises on purpose: one line naming the problem and the fix. */
export class GraphlensError extends Error {
  constructor(message) {
    super(message);
    this.name = 'GraphlensError';
  }
}
