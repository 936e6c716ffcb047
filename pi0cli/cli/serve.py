"""``pi0 serve``: serve a policy to robots over the openpi websocket protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pi0cli.cli import console
from pi0cli.cli.embodiments import complete_embodiment
from pi0cli.cli.sim_common import check_state_input
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE, FAST_DECODE_RULES


# The parameters below are a declarative table (typer reads the signature: one flag, its bounds and help each);
# their repeated shape is how typer declares options, not logic to share.
def serve(
    embodiment: Annotated[str | None, typer.Option(
        "--embodiment", "-e", help="Robot the policy drives (see `pi0 embodiments list`); with --artifact, default "
                                   "the artifact's.",
        autocompletion=complete_embodiment,
    )] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-c",
        help="Checkpoint dir (holding params/ and assets/); default: the embodiment's default checkpoint.",
    )] = None,
    host: Annotated[str, typer.Option(
        "--host",
        help="Interface to listen on (0.0.0.0 for every interface).",
    )] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535,
        help="Port to listen on (0: any free port).",
    )] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="PI0_API_KEY",
        help="Require 'Authorization: Api-Key KEY' from clients.",
    )] = None,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, max=256,
        help="Most requests run in one model call (1 turns batching off).",
    )] = 8,
    batch_window_ms: Annotated[float, typer.Option(
        "--batch-window-ms", min=0.0,
        help="How long the first request of a batch waits for others (not at all when every connected "
             "client is already waiting).",
    )] = 10.0,
    record: Annotated[Path | None, typer.Option(
        "--record",
        help="Save every request and reply to this directory (.npz).",
    )] = None,
    max_message_mb: Annotated[float, typer.Option(
        "--max-message-mb", min=0.001,
        help="Largest request accepted, in MiB.",
    )] = 64.0,
    max_message_elements: Annotated[int, typer.Option(
        "--max-message-elements", min=16,
        help="Most msgpack elements (containers count 1 plus their length) in one request; bounds the "
             "decoding cost of any frame.",
    )] = 2**15,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1,
        help="Most open websocket connections; a new one beyond it is closed with code 1013 (try again "
             "later).",
    )] = 64,
    idle_timeout_s: Annotated[float, typer.Option(
        "--idle-timeout-s", min=0.0,
        help="Close a connection that sends no request for this long (0: never).",
    )] = 600.0,
    max_buffered_frames: Annotated[int, typer.Option(
        "--max-buffered-frames", min=1,
        help="Frames buffered per connection while its request is served (the socket is not read further).",
    )] = 2,
    rejected_mb_per_s: Annotated[float, typer.Option(
        "--rejected-mb-per-s", min=0.0,
        help="Server-wide budget for costly refused frames (over 64 KiB or 2 ms of decoding): their sender's "
             "next frame is read once they are paid for, at this rate plus 4x their decoding time (0: off).",
    )] = 4.0,
    max_input_std: Annotated[float | None, typer.Option(
        "--max-input-std", min=0.0,
        help="Refuse requests whose normalised state is further than this from the norm stats' centre (std "
             "units; quantile stats: q01..q99 is -1..1). Default: only non-finite values are refused.",
    )] = None,
    record_queue_mb: Annotated[float, typer.Option(
        "--record-queue-mb", min=1.0,
        help="Most MiB of requests waiting to be written by --record; beyond it records are dropped "
             "(counted in /metrics).",
    )] = 256.0,
    record_unknown_key_kb: Annotated[float, typer.Option(
        "--record-unknown-key-kb", min=0.0,
        help="Largest value --record keeps under a key the embodiment does not know, in KiB (larger ones "
             "are left out and noted).",
    )] = 1024.0,
    default_prompt: Annotated[str | None, typer.Option(
        "--default-prompt",
        help="Prompt used when a request has none.",
    )] = None,
    model: Annotated[str | None, typer.Option(
        "--model",
        help="Model preset of a checkpoint without pi0_config.json (e.g. a reference openpi one): pi0, "
             "pi05, ...",
    )] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer",
        help="SentencePiece model for prompts (default: the checkpoint's, else the PaliGemma tokenizer).",
    )] = None,
    num_steps: Annotated[int, typer.Option("--num-steps", min=1, help="Denoising steps per action chunk.")] = 10,
    max_decoding_steps: Annotated[int, typer.Option(
        "--max-decoding-steps", min=1, help="pi0-FAST: action tokens decoded per chunk at most (EOS stops sooner).",
    )] = 256,
    temperature: Annotated[float, typer.Option(
        "--temperature", min=0.0, help="pi0-FAST: sampling temperature of action tokens (0: greedy).",
    )] = 0.0,
    rtc_max_guidance: Annotated[float | None, typer.Option(
        "--rtc-max-guidance", min=0.0,
        help="Real-time chunking: clip of the guidance weight (default: the paper's 5; larger follows the previous "
             "chunk more closely).",
    )] = None,
    fast_decode: Annotated[str, typer.Option(
        "--fast-decode", metavar="strict|lenient|constrained",
        help="pi0-FAST: strict (the reference: a wrong number of DCT coefficients fails the chunk, zeros are sent), "
             "lenient (cut or zero-fill the highest frequencies) or constrained (only tokens that keep the output a "
             "well-formed chunk may be chosen: every chunk decodes).",
    )] = DEFAULT_FAST_DECODE,
    state_input: Annotated[str | None, typer.Option(
        "--state-input", metavar="visible|hidden",
        help="hidden: the model never sees the robot's state (for a checkpoint trained with state dropout, whose "
             "training showed it both ways); default: the checkpoint's (visible).",
    )] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling noise.")] = 0,
    artifact: Annotated[Path | None, typer.Option(
        "--artifact", help="Serve an ONNX artifact (`pi0 export`) on ONNX Runtime instead of a checkpoint (no JAX).",
    )] = None,
    onnx_provider: Annotated[list[str] | None, typer.Option(
        "--onnx-provider", help="With --artifact: ONNX Runtime execution provider, repeatable in order of preference "
                                "(e.g. TensorrtExecutionProvider); default CPUExecutionProvider.",
    )] = None,
) -> None:
    """Serve a policy over websockets (openpi-compatible; openpi-client works unchanged)."""
    if fast_decode not in FAST_DECODE_RULES:
        raise typer.BadParameter(f"{fast_decode!r} is not strict, lenient or constrained", param_hint="--fast-decode")
    check_state_input(state_input)
    if state_input is not None and artifact is not None:
        raise typer.BadParameter("an ONNX artifact keeps the state input it was exported with; drop --state-input",
                                 param_hint="--state-input")
    import asyncio
    import logging
    import signal

    from pi0cli.errors import Pi0Error
    if artifact is not None and checkpoint is not None:
        raise Pi0Error("pass --checkpoint or --artifact, not both")
    if artifact is not None and embodiment is None:
        from pi0cli.runtime.manifest import read_manifest

        embodiment = str(read_manifest(artifact, check_files=False).get("embodiment"))
    if embodiment is None:
        raise Pi0Error("pass --embodiment ROBOT (see `pi0 embodiments list`)")
    emb = console.registry().embodiment(embodiment)
    if checkpoint is None and artifact is None and emb.default_checkpoint is None:
        raise Pi0Error(f"embodiment {emb.name!r} has no default checkpoint; pass --checkpoint DIR")
    location = checkpoint or emb.default_checkpoint or ""
    model_name = model if (model or checkpoint) else emb.default_model

    from pi0cli.downloads import resolve_checkpoint
    from pi0cli.policy.load import load_policy
    from pi0cli.policy.policy import batch_sizes_up_to
    from pi0cli.serving.server import PolicyServer

    recorder = None
    if record is not None:  # before loading: a directory that cannot be written is one line, at once
        from pi0cli.serving.recording import Recorder

        recorder = Recorder.for_embodiment(record, emb, max_queue_bytes=int(record_queue_mb * 2**20),
                                           max_unknown_key_bytes=int(record_unknown_key_kb * 1024))
    directory = resolve_checkpoint(location) if artifact is None else artifact
    if checkpoint is not None:
        from pi0cli.cli.checkpoints import step_dir

        directory = step_dir(directory)  # an experiment folder: its latest complete step, said on stderr
    sizes = batch_sizes_up_to(max_batch)
    with console.err.status(f"loading {directory} ..."):
        if artifact is not None:
            from pi0cli.runtime import load_artifact

            policy = load_artifact(artifact, embodiment=emb, seed=seed, default_prompt=default_prompt,
                                   providers=onnx_provider or None)
            sizes = policy.batch_sizes
        else:
            policy = load_policy(directory, embodiment=emb, model=model_name, default_prompt=default_prompt,
                                 tokenizer=tokenizer, batch_sizes=sizes, num_steps=num_steps, seed=seed,
                                 max_decoding_steps=max_decoding_steps, temperature=temperature,
                                 fast_decode=fast_decode, state_input=state_input,  # type: ignore[arg-type]
                                 rtc_max_guidance=rtc_max_guidance)
    policy.max_input_std = max_input_std
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = PolicyServer(
        policy, embodiment=emb, host=host, port=port, api_key=api_key, max_batch=max_batch,
        batch_window_ms=batch_window_ms, max_message_bytes=int(max_message_mb * 2**20),
        max_elements=max_message_elements, max_connections=max_connections, idle_timeout_s=idle_timeout_s or None,
        max_buffered_frames=max_buffered_frames, rejected_bytes_per_s=rejected_mb_per_s * 2**20 or None,
        recorder=recorder,
    )

    def listening(srv: PolicyServer) -> None:
        auth = "API key required" if api_key else "no API key"
        console.out.print(f"pi0 serve: {policy.description}")
        console.out.print(f"listening on ws://{host}:{srv.port} ({auth}); health: http://{host}:{srv.port}/healthz, "
                          f"metrics: /metrics; "
                          f"compiling batch sizes {', '.join(map(str, sizes))} ...")

    def ready(srv: PolicyServer) -> None:
        console.out.print(f"ready in {srv.warmup_s or 0:.1f} s (batch window {batch_window_ms:g} ms"
                          + (f", recording to {record}" if record else "") + ")")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, server.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await server.serve(on_listening=listening, on_ready=ready)

    asyncio.run(main())
    if server.batcher.failed is not None:
        raise Pi0Error(f"the model failed to start: {server.batcher.failed}")
    console.out.print(f"stopped after {server.requests} request(s), {server.errors} rejected")
