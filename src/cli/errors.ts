/** How the CLI words an error for a person. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
