"""The bottom layer: errors and exit codes, console output, atomic writes, test-only fault injection."""
