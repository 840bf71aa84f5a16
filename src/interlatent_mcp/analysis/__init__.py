"""Statistics, correlations and top activations computed from the store."""

from interlatent_mcp.analysis.compute import AnalysisParams, compute_stats

__all__ = ["AnalysisParams", "compute_stats"]
