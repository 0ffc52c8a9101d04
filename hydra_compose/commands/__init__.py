"""One module per command: each does the work and returns a frozen result; the CLI prints it."""
