"""Allow `python -m interlatent_mcp`."""

from interlatent_mcp.cli import main

raise SystemExit(main())
