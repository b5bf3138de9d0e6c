"""Supervised fine-tuning: the core's ``sft`` training method."""

from __future__ import annotations

import shutil

from . import output
from .setup import log, training_arguments


def finish_run(setup, trainer, summary, metrics: dict, base_adapters: list[str] | None = None) -> str:
    """Publish the final weights and tokenizer, then the run record (last, atomically).

    ``base_adapters``: the adapter runs the saved adapter applies on top of (default: those
    the setup merged into the base; a method that trains an earlier adapter further passes
    that adapter's own).
    """
    output_dir = setup.output_dir
    if getattr(trainer, "trained_nothing", False) and (output_dir / output.RUN_RECORD_NAME).is_file():
        # Resumed from the last checkpoint of a finished run: its weights and record are already there.
        log(f"the run in {output_dir} had already finished after {trainer.state.global_step} steps; nothing changed")
        end_distributed()
        return str(output_dir)
    staging = output_dir / ".final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        # the processor where the family loads one (it saves the tokenizer with it), carrying the
        # chat template the model was trained with, so whatever loads the output renders as training did
        from tuneforge.templates import save_with_chat_template

        save_with_chat_template(getattr(setup.bundle, "processor", None) or setup.tokenizer, setup.template, staging)
        output.publish_final(staging, output_dir)
        record = output.run_record(
            setup.config,
            method=setup.method,
            base_model=setup.resolved.base_path,
            base_adapters=(setup.base_adapters if base_adapters is None else base_adapters) if setup.tuner.saves_adapter else [],
            family=setup.family.name,
            template=setup.template_name,
            tuner=setup.tuner,
            dtype=setup.dtype_name,
            data=summary.to_dict(),
            train_metrics={**metrics, "global_step": trainer.state.global_step},
            run_id=setup.run_id,
            template_parity=setup.bundle.template_parity,
            family_options=setup.bundle.family_options,
            fast_path_off=setup.fast_path_off,
        )
        record.write(output_dir)
        peak = setup.device.peak_memory()
        memory = f" (peak {peak / 2**30:.2f} GiB allocated on {setup.device.name})" if peak else ""
        log(f"finished after {trainer.state.global_step} steps{memory}; the model is in {output_dir}")
    end_distributed()
    return str(output_dir)


def end_distributed() -> None:
    """Once every process is done, close the process group of a multi-process run.

    A process that exits with its group open can abort on the way out (the collective
    backend's threads are still running), failing a run whose work is all written.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_trainer(setup, model, train_dataset, eval_dataset=None, callbacks=None):
    """The ``sft`` trainer: the collator, loss and arguments the options ask for."""
    from tuneforge.data.collate import make_collator

    from .attention import VARLEN
    from .trainer import TuneforgeTrainer

    config = setup.config
    sequence_parallel_size = int(getattr(config, "sequence_parallel_size", 1) or 1)
    return TuneforgeTrainer(
        model=model,
        args=training_arguments(setup, has_eval=eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=make_collator(
            setup.tokenizer,
            packing=bool(config.packing),
            # a row cut across a sequence group is padded to a multiple of its size
            pad_to_multiple_of=sequence_parallel_size if sequence_parallel_size > 1 else None,
            boundaries=config.attn_implementation == VARLEN,
            collate_extras=getattr(setup.template, "collate_extras", None),
            packs_extras=getattr(setup.template, "packs_extras", False),
        ),
        processing_class=setup.tokenizer,
        loss_chunk_size=config.loss_chunk_size if getattr(config, "chunked_loss", None) else None,
        callbacks=callbacks,
        run_id=setup.run_id,
        sequence_parallel_size=sequence_parallel_size,
    )


def prepare_data(ctx):
    """The ``sft`` data: conversations encoded with the run's template (packed when the options ask)."""
    from tuneforge.data.pipeline import prepare_datasets

    return prepare_datasets(ctx.config, ctx.tokenizer, ctx.template)


def trainer_for(ctx, model, ref_model=None):
    """The ``sft`` trainer for a ``RunContext`` (sft has no reference model)."""
    return build_trainer(ctx.setup, model, ctx.train_dataset, ctx.eval_dataset)


def run_sft(config) -> str:
    from tuneforge.registry import get_registry

    return get_registry().get("training_methods", "sft").run(config)
