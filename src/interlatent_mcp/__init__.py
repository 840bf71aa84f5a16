"""interlatent: record, analyse and explain the channels of neural-network policies.

The library is layered: `store` (the SQLite latent store), `capture` (policies, hooks, rollouts),
`analysis` (statistics, correlations, top activations), and above them the MCP server and the
command line. Heavy modules (torch, gymnasium) are imported lazily by the layers that need them.
"""

__version__ = "0.1.0"
