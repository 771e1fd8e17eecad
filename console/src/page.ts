// What every page provides to the shell (src/main.ts).

export interface Page {
  /** Heading and document title. */
  title: string;
  /** Builds the page's DOM inside `root` (the data regions start empty). */
  mount(root: HTMLElement): void;
  /** Fetches and redraws the data regions; called on mount and every poll. Throws ApiError. */
  refresh(): Promise<void>;
  unmount(): void;
}
