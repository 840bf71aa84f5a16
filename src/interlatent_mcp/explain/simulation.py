"""Simulation scoring: an LLM predicts a channel's activation from its explanation alone.

The model reads the explanation's text and a table of held-out steps (the per-step variables
only, never an activation) and predicts the activation at each step on a 0 to 10 scale. The
score is the Pearson correlation between the predictions and the real activations, following
the simulate-and-score method of Bills et al., "Language models can explain neurons in language
models" (OpenAI, 2023). Held-out means the steps exclude the analysis's precomputed top
activations and the explanation's evidence, which an explainer may have read. About half of the
sampled steps are firing steps, so a sparse channel is not scored on quiet steps alone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.llm import LLMBackend, LLMError, Message
from interlatent_mcp.explain.scoring import (
    ScoringData,
    analysis_runs,
    choose_threshold,
    pearson,
    read_scoring_data,
    resolve_analysis,
)
from interlatent_mcp.store import AnalysisRecord, ExplanationRecord, Store
from interlatent_mcp.store.connection import utc_now

logger = logging.getLogger(__name__)

SIMULATION_SYSTEM = (
    "You simulate one channel (a unit) inside a neural-network policy that acts in an "
    "environment. From a written explanation of the channel, predict how strongly it activates "
    "at each listed step, on a scale from 0 (not at all) to 10 (as strongly as it ever does). "
    "You see only the per-step variables, never the activations. Reply with exactly one line "
    "per step in the form `<id>: <prediction>` and nothing else."
)
_PREDICTION_LINE = re.compile(r"^\s*(\d+)\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.MULTILINE)


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of simulation scoring: the steps sampled and the model call."""

    n_steps: int = 40
    """Held-out steps shown to the model (10 to 200)."""
    firing_fraction: float = 0.5
    """Share of the sampled steps drawn from the firing steps (0 to 1); the rest are random."""
    seed: int = 0
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if not 10 <= self.n_steps <= 200:
            raise InvalidArgumentError(f"n_steps must be between 10 and 200, got {self.n_steps}")
        if not 0.0 <= self.firing_fraction <= 1.0:
            raise InvalidArgumentError(f"firing_fraction must be in [0, 1], got "
                                       f"{self.firing_fraction}")


@dataclass(frozen=True)
class SimulationScore:
    """The result of one simulation: correlation, what was shown, and what it cost."""

    correlation: float
    """Pearson r of predictions and activations; 0.0 when the predictions are all equal."""
    constant_predictions: bool
    n_steps: int
    n_firing_shown: int
    analysis_id: int
    model: str
    input_tokens: int
    output_tokens: int
    steps: list[list[int]]
    """The [run_id, step] pairs shown, in the order of their ids 1, 2, ..."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _held_out_rows(store: Store, analysis: AnalysisRecord, explanation: ExplanationRecord,
                   data: ScoringData) -> np.ndarray:
    """Return a mask of the rows an explainer has not been shown."""
    excluded = [(t.run_id, t.step) for t in store.get_top_activations(
        analysis.analysis_id, explanation.layer_id, explanation.channel)]
    for item in explanation.evidence.get("steps", []):
        if isinstance(item, dict) and "run_id" in item and "step" in item:
            excluded.append((int(item["run_id"]), int(item["step"])))
    mask = np.isfinite(data.activations[:, 0])
    for run_id, step in excluded:
        if run_id in data.run_offsets and 0 <= data.run_offsets[run_id] + step < mask.size:
            mask[data.run_offsets[run_id] + step] = False
    return mask


def sample_steps(store: Store, analysis: AnalysisRecord, explanation: ExplanationRecord,
                 data: ScoringData, config: SimulationConfig) -> tuple[np.ndarray, int]:
    """Return shuffled held-out rows (about `firing_fraction` of them firing) and the firing count."""
    rng = np.random.default_rng(config.seed)
    activation = data.activations[:, 0]
    allowed = _held_out_rows(store, analysis, explanation, data)
    firing = allowed & (activation > choose_threshold(activation).value)
    firing_rows = np.flatnonzero(firing)
    n_firing = min(len(firing_rows), int(round(config.n_steps * config.firing_fraction)))
    chosen = rng.choice(firing_rows, size=n_firing, replace=False) if n_firing else np.zeros(0, int)
    rest = np.flatnonzero(allowed & ~np.isin(np.arange(activation.size), chosen))
    n_rest = min(len(rest), config.n_steps - n_firing)
    rows = np.concatenate([chosen, rng.choice(rest, size=n_rest, replace=False)]).astype(int)
    rng.shuffle(rows)
    return rows, int(np.sum(firing[rows]))


def build_prompt(text: str, data: ScoringData, rows: np.ndarray) -> str:
    """Write the explanation and the table of steps the model predicts for."""
    names = list(data.variables)
    lines = [f"Explanation of the channel: {text}", "",
             "Steps (one per line; id, then the per-step variables):",
             "id | " + " | ".join(names)]
    for index, row in enumerate(rows, start=1):
        values = " | ".join(f"{data.variables[name][row]:.4g}" for name in names)
        lines.append(f"{index} | {values}")
    lines += ["", f"Predict the activation of each of the {len(rows)} steps, 0 to 10, one line "
                  f"per step as `<id>: <prediction>`."]
    return "\n".join(lines)


def parse_predictions(text: str, n_steps: int) -> dict[int, float]:
    """Read `<id>: <prediction>` lines; ids outside 1..n_steps are ignored, values clipped."""
    predictions: dict[int, float] = {}
    for match in _PREDICTION_LINE.finditer(text):
        index = int(match.group(1))
        if 1 <= index <= n_steps and index not in predictions:
            predictions[index] = float(np.clip(float(match.group(2)), 0.0, 10.0))
    return predictions


def score_by_simulation(store: Store, explanation: ExplanationRecord | int, backend: LLMBackend,
                        *, analysis: AnalysisRecord | int | None = None,
                        config: SimulationConfig | None = None) -> ExplanationRecord:
    """Simulate an explanation version with `backend` and store scores['simulation']."""
    config = config or SimulationConfig()
    record = store.get_explanation(explanation) if isinstance(explanation, int) else explanation
    analysis_record = resolve_analysis(store, record.layer_id, analysis)
    runs = analysis_runs(store, analysis_record)
    data = read_scoring_data(store, runs, record.layer_id, [record.channel], runs[0].variables)
    rows, n_firing = sample_steps(store, analysis_record, record, data, config)
    if rows.size < 10:
        raise InvalidArgumentError(
            f"only {rows.size} held-out steps are available for layer id {record.layer_id}, "
            f"channel {record.channel}; record more steps before simulation scoring"
        )

    response = backend.complete([Message.user(build_prompt(record.text, data, rows))],
                                system=SIMULATION_SYSTEM, max_tokens=config.max_tokens)
    predictions = parse_predictions(response.text, rows.size)
    if len(predictions) < rows.size / 2:
        raise LLMError(
            f"the model predicted only {len(predictions)} of {rows.size} steps; its reply began "
            f"{response.text[:200]!r}"
        )
    ids = sorted(predictions)
    predicted = np.array([predictions[i] for i in ids])
    actual = data.activations[rows[np.array(ids) - 1], 0]
    correlation = pearson(predicted, actual)
    offsets = {offset: run_id for run_id, offset in data.run_offsets.items()}
    score = SimulationScore(
        correlation=0.0 if correlation is None else correlation,
        constant_predictions=correlation is None, n_steps=len(ids), n_firing_shown=n_firing,
        analysis_id=analysis_record.analysis_id, model=response.model or backend.model,
        input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens,
        steps=[_run_step(int(row), offsets) for row in rows],
    )
    logger.info("explanation %d simulated by %s: r = %.3f over %d steps", record.explanation_id,
                score.model, score.correlation, score.n_steps)
    return store.set_explanation_scores(
        record.explanation_id, {"simulation": {**score.as_dict(), "scored_at": utc_now()}})


def _run_step(row: int, offsets: dict[int, int]) -> list[int]:
    start = max(offset for offset in offsets if offset <= row)
    return [offsets[start], row - start]
