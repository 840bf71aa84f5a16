"""MCP resources (schema, runs, channel tables and cards) and prompts."""
