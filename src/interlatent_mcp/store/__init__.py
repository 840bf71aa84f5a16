"""The latent store: one SQLite file; every line of SQL in the project lives in this package."""

from interlatent_mcp.store.analyses import (
    AnalysisRecord,
    ChannelStats,
    Correlation,
    LayerResults,
    TopActivation,
)
from interlatent_mcp.store.connection import default_store_path
from interlatent_mcp.store.investigation import ExplanationRecord, JobRecord, NoteRecord
from interlatent_mcp.store.records import (
    EpisodeRecord,
    LayerRecord,
    PolicyRecord,
    RunRecord,
    StepChunk,
    StepContext,
)
from interlatent_mcp.store.schema import SCHEMA_VERSION
from interlatent_mcp.store.store import Store

__all__ = [
    "SCHEMA_VERSION",
    "AnalysisRecord",
    "ChannelStats",
    "Correlation",
    "EpisodeRecord",
    "ExplanationRecord",
    "JobRecord",
    "NoteRecord",
    "LayerRecord",
    "LayerResults",
    "PolicyRecord",
    "RunRecord",
    "StepChunk",
    "StepContext",
    "Store",
    "TopActivation",
    "default_store_path",
]
