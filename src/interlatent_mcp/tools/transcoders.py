"""Transcoder tools: train_transcoder and evaluate_transcoder (jobs), list_transcoders."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from interlatent_mcp.jobs import JobControl
from interlatent_mcp.store import Store
from interlatent_mcp.store.transcoders import TranscoderRecord
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import Limit, Offset, Page, PolicyRef, next_offset, resolve_policy
from interlatent_mcp.tools.jobs import (
    DEFAULT_WAIT_S,
    JobInfo,
    WaitSeconds,
    follow_up,
    job_info,
    start_and_wait,
)

tools = ToolSet()
register = tools.register

MAX_LATENTS = 65_536
MAX_EPOCHS = 1_000
MAX_SPLICE_EPISODES = 100

TranscoderRef = Annotated[int | str, Field(description="Transcoder id or name, as train_transcoder or list_transcoders returned it.")]
TrainLayer = Annotated[str, Field(min_length=1, max_length=200, description="Layer name as recorded, e.g. 'act2:pre'.")]


class ReconstructionSummary(BaseModel):
    n_steps: int = Field(description="Steps evaluated.")
    fvu: float = Field(description="Fraction of variance unexplained: sum of squared errors / sum of squared deviations of the target from its per-channel mean. 0 is perfect; 1 is no better than the mean.")
    explained_variance: float = Field(description="1 - fvu.")
    mean_l0: float = Field(description="Mean number of nonzero latents per step.")
    dead_fraction: float = Field(description="Fraction of latents that are zero on every evaluated step.")


class SpliceSummary(BaseModel):
    episodes: int
    seed: int
    original_mean_return: float
    spliced_mean_return: float
    return_ratio: float | None = Field(description="Spliced mean return / original mean return (null unless the original mean is positive). Near 1 means the transcoder preserves the policy's behaviour.")
    action_agreement: float = Field(description="Fraction of the spliced rollout's states where the original policy would take the same action.")


class TranscoderSummary(BaseModel):
    transcoder_id: int
    name: str
    policy_id: int
    input_layer: str
    output_layer: str
    kind: Literal["transcoder", "autoencoder"] = Field(description="autoencoder when input and output layer are the same.")
    architecture: str
    n_latents: int
    k: int | None = Field(description="Active latents per step (topk) or on average (batchtopk); null for relu and jumprelu.")
    latent_layer: str | None = Field(description="The layer the latents are recorded as; use it as the layer of compute_stats, get_channel, top_activations and write_explanation.")
    run_ids: list[int] = Field(description="Runs it was trained on.")
    held_out: ReconstructionSummary | None = Field(description="Evaluation on the episodes held out of training.")
    splice: SpliceSummary | None = Field(description="The latest splice-in measurement (evaluate_transcoder), if any.")
    epochs: int | None = None
    stopped: str | None = Field(None, description="Why training ended: converged, max_epochs or requested (cancelled).")
    created_at: str


class TrainResult(BaseModel):
    job: JobInfo
    transcoder: TranscoderSummary | None = Field(description="The trained transcoder, once the job is complete.")
    next_step: str


class TranscoderPage(Page):
    transcoders: list[TranscoderSummary]


class EvaluationSummary(BaseModel):
    transcoder: str
    reconstruction: ReconstructionSummary
    evaluated_on: str = Field(description="'held-out episodes' or the runs evaluated.")
    density_edges: list[float] = Field(description="Bin edges of log10(latent firing density).")
    density_counts: list[int] = Field(description="Latents per density bin (dead latents not counted).")
    splice: SpliceSummary | None = Field(description="Splice-in fidelity; null when splice_episodes is 0.")


class EvaluationResult(BaseModel):
    job: JobInfo
    evaluation: EvaluationSummary | None = Field(description="The evaluation, once the job is complete.")
    next_step: str


def _reconstruction(values: dict[str, Any] | None) -> ReconstructionSummary | None:
    return None if not values else ReconstructionSummary.model_validate(values)


def _splice(values: dict[str, Any] | None) -> SpliceSummary | None:
    return None if not values else SpliceSummary.model_validate(values)


def summarize_transcoder(store: Store, record: TranscoderRecord) -> TranscoderSummary:
    hyperparameters = record.config.get("hyperparameters", {})
    training = record.metrics.get("training", {})
    latent_layer = None
    if record.latent_layer_id is not None:
        latent_layer = store.get_layer_by_id(record.latent_layer_id).name
    uses_k = record.architecture in ("topk", "batchtopk")
    return TranscoderSummary(
        transcoder_id=record.transcoder_id, name=record.name, policy_id=record.policy_id,
        input_layer=record.input_layer, output_layer=record.output_layer,
        kind="autoencoder" if record.input_layer == record.output_layer else "transcoder",
        architecture=record.architecture, n_latents=record.config.get("n_latents", 0),
        k=hyperparameters.get("k") if uses_k else None, latent_layer=latent_layer,
        run_ids=record.config.get("data", {}).get("run_ids", []),
        held_out=_reconstruction(record.metrics.get("held_out")),
        splice=_splice(record.metrics.get("splice")),
        epochs=training.get("epochs"), stopped=training.get("stopped"),
        created_at=record.created_at,
    )


@tools.job("train_transcoder")
def train_transcoder_job(control: JobControl, params: dict[str, Any]) -> dict[str, Any]:
    from interlatent_mcp.transcoders import TranscoderConfig, train_transcoder

    config = TranscoderConfig(
        architecture=params["architecture"], n_latents=params["n_latents"], k=params["k"],
        skip_connection=params["skip_connection"], max_epochs=params["max_epochs"],
        seed=params["seed"],
    )
    # Progress counts epochs out of max_epochs + 1: the last unit stores the coder and records
    # its latents, so the job reaches its total only once it is finished.
    total = config.max_epochs + 1

    def progress(done: float, _total: float, message: str) -> None:
        control.report(done, total, message)

    trained = train_transcoder(
        control.store, params["run_ids"], params["input_layer"], params["output_layer"],
        config=config, name=params["name"], progress=progress, should_stop=control.should_stop,
    )
    summary = summarize_transcoder(control.store, trained.record)
    _report_training_end(control, summary, total)
    return summary.model_dump()


def _report_training_end(control: JobControl, summary: TranscoderSummary, total: int) -> None:
    """Replace the last epoch's progress message with how training ended."""
    epochs = summary.epochs or 0
    if summary.stopped == "requested":
        control.report(epochs, total, f"stopped on request after {epochs} epochs; stored "
                                      f"{summary.name!r} with the best weights so far")
        return
    reason = ("stopped early: the validation loss stopped improving"
              if summary.stopped == "converged" else "reached max_epochs")
    fvu = "" if summary.held_out is None else f", held-out FVU {summary.held_out.fvu:.4f}"
    control.report(total, total,
                   f"finished: trained {summary.name!r} for {epochs} epochs ({reason}){fvu}")


@tools.tool(title="Train a transcoder", read_only=False, idempotent=False)
async def train_transcoder(
    context: ServerContext,
    ctx: Context,
    run_ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=100, description="Runs to train on (one policy); each must have recorded input_layer and output_layer.")],
    input_layer: TrainLayer,
    output_layer: Annotated[str | None, Field(min_length=1, max_length=200, description="Layer to reconstruct, e.g. 'act2:post' for a transcoder of module act2; omitted means an autoencoder of input_layer.")] = None,
    architecture: Annotated[Literal["topk", "batchtopk", "relu", "jumprelu"], Field(description="topk: exactly k latents per step (the default, easiest to tune); batchtopk: k on average; relu: L1 penalty; jumprelu: learned thresholds with an L0 penalty.")] = "topk",
    n_latents: Annotated[int | None, Field(ge=1, le=MAX_LATENTS, description="Number of latents; omitted means 4 x the output layer's width.")] = None,
    k: Annotated[int, Field(ge=1, le=1024, description="Active latents per step for topk and batchtopk.")] = 8,
    skip_connection: Annotated[bool, Field(description="Add a linear input-to-output path next to the sparse one (transcoders only).")] = False,
    max_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS, description="Upper bound on passes over the training episodes; training stops earlier once the validation loss stops improving.")] = 100,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="Seed of the episode split, initialisation and batch order; the same seed and data give the same transcoder.")] = 0,
    name: Annotated[str | None, Field(min_length=1, max_length=100, description="Name to store it under (letters, digits, '_', '.', '-'); omitted means a generated one such as 'act2-transcoder-topk'.")] = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> TrainResult:
    """Train a sparse transcoder (input_layer -> output_layer, e.g. a module's ':pre' to its
    ':post') or a sparse autoencoder (output_layer omitted) on recorded activations, to get
    sparser, usually more interpretable units than the raw channels.

    Whole episodes are split into training, validation (early stopping) and held-out sets;
    the result reports FVU, mean L0 and dead latents on the held-out episodes. The latents are
    then recorded as a new layer 'transcoder/<name>' of the same runs, so compute_stats,
    get_channel, top_activations and write_explanation work on latents as on channels. Cost:
    roughly 10-20 s for 10,000 steps of a 64-channel layer on one CPU core (an estimate from
    CartPole runs). Waits up to wait_seconds, then returns a job id to follow with get_job.
    Progress counts epochs out of max_epochs + 1, the last unit being the recording of the
    latents; cancel_job keeps the best weights so far.
    """
    params = {"run_ids": list(run_ids), "input_layer": input_layer, "output_layer": output_layer,
              "architecture": architecture, "n_latents": n_latents, "k": k,
              "skip_connection": skip_connection, "max_epochs": max_epochs, "seed": seed,
              "name": name}
    if name is not None:
        # Checked before the job starts, so that the call fails at once.
        await anyio.to_thread.run_sync(context.store.check_transcoder_name, name)
    record = await start_and_wait(context, ctx, "train_transcoder", params, wait_seconds)
    summary = TranscoderSummary.model_validate(record.result) if record.result else None
    advice = "call evaluate_transcoder to measure splice-in fidelity"
    if summary is not None and summary.latent_layer is not None:
        advice = (f"call compute_stats with run_ids={summary.run_ids} and "
                  f"layers=[{summary.latent_layer!r}] to study the latents, and "
                  f"evaluate_transcoder with transcoder={summary.name!r} to check that the "
                  f"policy still behaves the same with it spliced in")
    return TrainResult(job=job_info(context, record, with_result=False), transcoder=summary,
                       next_step=follow_up(record, advice))


@tools.tool(title="List transcoders")
def list_transcoders(
    context: ServerContext,
    policy: PolicyRef = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> TranscoderPage:
    """List trained transcoders and autoencoders, newest first: their layers, architecture,
    held-out FVU, mean L0 and dead fraction, the latest splice-in result and the layer their
    latents are recorded as. Cheap; paged."""
    store = context.store
    policy_id = None if policy is None else resolve_policy(store, policy).policy_id
    records = store.list_transcoders(policy_id=policy_id, offset=offset, limit=limit)
    total = store.count_transcoders(policy_id=policy_id)
    return TranscoderPage(
        transcoders=[summarize_transcoder(store, record) for record in records],
        offset=offset, total=total, next_offset=next_offset(offset, len(records), limit, total),
    )


@tools.job("evaluate_transcoder")
def evaluate_transcoder_job(control: JobControl, params: dict[str, Any]) -> dict[str, Any]:
    from interlatent_mcp.transcoders import compute_splice_fidelity, evaluate_transcoder

    store, transcoder = control.store, params["transcoder"]
    run_ids, episodes = params["run_ids"], params["splice_episodes"]
    control.report(0, 1 + episodes, "reconstruction")
    metrics = evaluate_transcoder(store, transcoder, run_ids)
    splice = None
    if episodes:
        control.raise_if_stopped()
        control.report(1, 1 + episodes, f"splice-in rollouts: {episodes} episodes, twice")
        splice = compute_splice_fidelity(store, transcoder, episodes=episodes,
                                         seed=params["seed"]).to_dict()
    summary = EvaluationSummary(
        transcoder=store.get_transcoder(transcoder).name,
        reconstruction=ReconstructionSummary.model_validate(metrics.to_dict()),
        evaluated_on="held-out episodes" if run_ids is None else f"runs {run_ids}",
        density_edges=metrics.density_edges, density_counts=metrics.density_counts,
        splice=_splice(splice),
    )
    control.report(1 + episodes, 1 + episodes,
                   f"finished: FVU {summary.reconstruction.fvu:.4f} on {summary.evaluated_on}")
    return summary.model_dump()


@tools.tool(title="Evaluate a transcoder", read_only=False, idempotent=False)
async def evaluate_transcoder(
    context: ServerContext,
    ctx: Context,
    transcoder: TranscoderRef,
    run_ids: Annotated[list[Annotated[int, Field(ge=1)]] | None, Field(max_length=100, description="Runs to measure reconstruction on (they must have recorded the transcoder's layers); omitted means its held-out episodes.")] = None,
    splice_episodes: Annotated[int, Field(ge=0, le=MAX_SPLICE_EPISODES, description="Episodes to run with the transcoder spliced into the policy and again without it (paired seeds); 0 skips the splice-in test.")] = 10,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="Episode e of both splice-in rollouts is reset with seed + e.")] = 0,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> EvaluationResult:
    """Measure how faithful a transcoder is. Reconstruction: FVU, mean L0, dead latents and the
    latent density histogram on its held-out episodes (or on the given runs). Splice-in
    fidelity: the policy runs in its environment with the layer replaced by the transcoder's
    reconstruction, against the original policy on the same seeds; the result compares mean
    returns and the actions both choose on the same states.

    Use it before trusting explanations of latents: a transcoder whose splice-in return ratio
    is far below 1 does not describe what the policy computes. Cost: the reconstruction is a
    pass over the data; each splice-in episode is played twice (CartPole: about 0.2 s per
    500-step episode pair on one CPU core, an estimate). The splice-in result is stored with
    the transcoder (list_transcoders shows it). Waits up to wait_seconds, then returns a job id.
    """
    params = {"transcoder": transcoder, "run_ids": None if run_ids is None else list(run_ids),
              "splice_episodes": splice_episodes, "seed": seed}
    record = await start_and_wait(context, ctx, "evaluate_transcoder", params, wait_seconds)
    evaluation = EvaluationSummary.model_validate(record.result) if record.result else None
    advice = "call list_transcoders to compare transcoders"
    return EvaluationResult(job=job_info(context, record, with_result=False),
                            evaluation=evaluation, next_step=follow_up(record, advice))
