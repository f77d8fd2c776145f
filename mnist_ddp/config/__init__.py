"""The configuration: its schema, its checks, loading it from YAML and the command line."""
