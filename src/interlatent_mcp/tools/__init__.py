"""MCP tools: each module validates arguments, calls the library and shapes the result.

See tools/base.py for how a module declares its tools and job kinds, and server.py for the list
of modules the server registers.
"""
