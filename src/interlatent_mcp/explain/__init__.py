"""Explanations of channels: a safe predicate language, scoring, heuristic drafts, LLM backends."""
