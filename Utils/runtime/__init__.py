"""Where and how a run executes: device, threads, seeds and memory (Runtime), data-parallel
processes (Parallel), one-line user errors (Errors)."""
