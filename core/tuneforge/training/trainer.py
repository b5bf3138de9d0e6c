"""The transformers Trainer, with checkpoints that appear whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import warnings

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .output import CHECKPOINT_RECORD, checkpoints

STAGING = ".staging"


class SamplerEpoch(TrainerCallback):
    """Give the data sampler its epoch at each epoch's start, through the loader it was prepared in.

    Resumed in the middle of an epoch after the first, the Trainer gives the epoch only
    to the loader that skips the batches already trained, and older accelerate versions
    (1.3 among them) do not pass it on to the sampler: the rest of that epoch would come
    in the first epoch's order (measured with transformers 5.0 and accelerate 1.3: weights
    that differ from the uninterrupted run's). Setting it again is harmless where it
    already arrived.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None and hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(int(state.epoch or 0))  # the epoch under way (1.33: in epoch 1)


def _is_adapter(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def load_policy_adapter(model, checkpoint: str) -> bool:
    """Load the adapter a checkpoint keeps at its root into the model's trained adapter; whether it did.

    A run that continues an adapter with a frozen copy of it beside (a method's
    reference, saved in a sub-folder such as ``ref/``) writes checkpoints with adapters in
    sub-folders. transformers before 5.23 then loads only those, so the trained adapter
    stays as the run started: the resumed run trains the starting adapter again (measured
    on transformers 5.17: the KL to the reference fell from 0.01 to 2e-5 at the resume).
    Where the Trainer has loaded it already, the same weights load again.
    """
    from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME

    root = os.path.join(checkpoint, ADAPTER_SAFE_WEIGHTS_NAME)  # what peft writes (safe_serialization)
    if not os.path.isfile(root) or not _is_adapter(model) or "default" not in model.peft_config:
        return False
    beside = [name for name in model.peft_config if name != "default"]
    if not any(os.path.isdir(os.path.join(checkpoint, name)) for name in beside):
        return False  # one adapter: the Trainer loads it from the root
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(root)
    result = set_peft_model_state_dict(model, weights, adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", None) or ())
    if unexpected:
        raise RuntimeError(
            f"The checkpoint {checkpoint} holds adapter weights this model has no place for ({unexpected[0]} and "
            f"{len(unexpected) - 1} more); resume it with the model and adapter settings it was trained with."
        )
    return True


class TuneforgeTrainer(Trainer):
    """A Trainer whose checkpoints are written to a staging dir, then renamed.

    ``checkpoint-N`` only ever names a complete checkpoint (one that rotation
    deletes is moved out of its name first), so a run killed while saving resumes
    from the previous one instead of a half-written directory. Each carries
    ``run_id`` (``tuneforge_checkpoint.json``), so a resume can tell its own run's
    checkpoints from another's, and the layout that wrote it (processes, backend,
    global batch: ``checkpoint_record``). Under several processes each writes its part
    into the same staging dir, which the main process renames after a barrier. A run
    resumed from its last step trains no further
    (``trained_nothing`` then says so).
    With ``loss_chunk_size`` set, the loss comes from the last hidden states chunk
    by chunk (``training.loss``) wherever the model's output layer allows it, under
    FSDP2 too (the output weight is read gathered: ``loss.unsharded_head``).
    FSDP runs on CPU processes too (gloo): accelerate keeps its FSDP plugin only for
    accelerator devices and would silently fall back to DDP there, so the plugin is
    put back (``fully_shard`` itself works on a CPU mesh), and the weights are saved
    from their gathered full tensors (accelerate's CPU-offloaded gather hands back
    the sharded tensors there).
    With ``sequence_parallel_size`` above 1, each packed row is cut across a group of
    that many processes (``training.sequence_parallel``): the loader is sharded by
    groups, each step's attention exchanges heads within the group, and the loss is
    that of the rank's slice, scaled so that the backend's gradient average is the
    one-process gradient.
    """

    def __init__(
        self, *args, loss_chunk_size: int | None = None, run_id: str | None = None, sequence_parallel_size: int = 1, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpoch())
        self.loss_chunk_size = loss_chunk_size
        self.run_id = run_id
        self.trained_nothing = False
        self.sequence_group = None
        if sequence_parallel_size > 1:
            from . import sequence_parallel
            from .setup import log

            self.sequence_group = sequence_parallel.new_groups(sequence_parallel_size)
            sequence_parallel.use_on(self.model)
            group = self.sequence_group
            log(f"sequence parallel: each packed row cut across {group.size} processes, "
                f"{group.data_size} data-parallel group{'s' if group.data_size > 1 else ''}")

    fsdp_on_cpu = False
    _loss_told = False  # whether the log has said which loss the training steps compute
    parallel_backend: str | None = None  # the backend's name, set by the run (recorded in each checkpoint)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if self.args.fsdp_plugin_args is not None and state.distributed_type == DistributedType.MULTI_CPU:
            from accelerate.state import PartialState

            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            state.distributed_type = DistributedType.FSDP
            # Where accelerate keeps it too: each later AcceleratorState() (the optimizer's wrapper makes
            # one) copies it from there, and a resume that read MULTI_CPU would load the weights on the
            # main process only and wait for the others forever.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True
            self.fsdp_on_cpu = True
        if self.is_fsdp_enabled:
            from .setup import log

            plugin = state.fsdp_plugin
            offloaded = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy" or getattr(plugin.cpu_offload, "offload_params", False)
            where = "; the shards in CPU memory, the optimizer stepping there" if offloaded else ""
            log(f"FSDP{plugin.fsdp_version}: weights, gradients and optimizer state sharded over {state.num_processes} processes{where}")

    def save_model(self, output_dir=None, _internal_call=False):
        # The final save (not a checkpoint's) writes float32 master weights back in the run's dtype.
        self._final_save = not _internal_call
        try:
            if not self.is_fsdp_enabled:
                return super().save_model(output_dir, _internal_call=_internal_call)
            # A checkpoint's weights are its sharded ones (written with the optimizer state);
            # an adapter, small, is gathered into it too, so a checkpoint of a LoRA run loads as one.
            if _internal_call and not _is_adapter(self.accelerator.unwrap_model(self.model)):
                return None
            # Every process takes part in gathering each tensor; the main one writes them.
            if self.fsdp_on_cpu:
                from torch.distributed.tensor import DTensor

                state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in self.model.state_dict().items()}
            else:
                state = self.accelerator.get_state_dict(self.model)
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state)
        finally:
            self._final_save = False

    _final_save = False

    def _save(self, output_dir=None, state_dict=None):
        from transformers import PreTrainedModel

        from .setup import MASTER_NAMES

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        masters = getattr(model, MASTER_NAMES, None)
        if not (self._final_save and masters and isinstance(model, PreTrainedModel)):
            return super()._save(output_dir, state_dict=state_dict)
        # A checkpoint keeps the float32 weights (a resume continues from them exactly); the
        # published model is in the dtype it was loaded in, as the base is and inference loads it.
        names, dtype = masters
        state_dict = model.state_dict() if state_dict is None else state_dict
        state_dict = {k: v.to(dtype) if k in names and v.is_floating_point() else v for k, v in state_dict.items()}
        super()._save(output_dir, state_dict=state_dict)
        config_file = os.path.join(output_dir or self.args.output_dir, "config.json")
        if self.args.should_save and os.path.isfile(config_file):
            # save_pretrained names the dtype of the model in memory (float32 now) in the config.
            with open(config_file) as handle:
                saved = json.load(handle)
            saved["dtype"] = str(dtype).removeprefix("torch.")
            with open(config_file + ".tmp", "w") as handle:
                json.dump(saved, handle, indent=2, sort_keys=True)
            os.replace(config_file + ".tmp", config_file)

    def get_train_dataloader(self):
        group = self.sequence_group
        if group is None:
            return super().get_train_dataloader()
        # Shard the rows by sequence group, not by process: the ranks of a group load the same rows.
        state = self.accelerator.state
        saved = state.num_processes, state.process_index
        state.num_processes, state.process_index = group.data_size, group.data_rank
        try:
            return super().get_train_dataloader()
        finally:
            state.num_processes, state.process_index = saved

    def _get_num_items_in_batch(self, batch_samples, device):
        count = super()._get_num_items_in_batch(batch_samples, device)
        group = self.sequence_group
        if group is not None and count is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = count // group.size  # summed over every process, and each of a group's processes holds the whole row
        return count

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.sequence_group is None:
            return super().training_step(model, inputs, num_items_in_batch)
        from .sequence_parallel import cutting

        with cutting(self.sequence_group):  # the backward pass too: checkpointing recomputes the exchange there
            return super().training_step(model, inputs, num_items_in_batch)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # transformers looks at the step count only after a step: resumed from the checkpoint
        # of the last step, it would train (and record) one step more than the run has.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.trained_nothing = True  # only reached before a step of this call: after one, the loop stops itself
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .loss import chunked_causal_lm_loss, head_returns_hidden, output_layer, unsharded_head

        if self.sequence_group is not None and model.training and "labels" in inputs:
            return self._sequence_parallel_loss(model, inputs, return_outputs, num_items_in_batch)
        # Evaluation keeps the plain loss: its callers may read the logits.
        asked = bool(self.loss_chunk_size and model.training and "labels" in inputs)
        head = output_layer(model) if asked else None
        plain = head is None or self.label_smoother is not None or self.compute_loss_func is not None
        if asked and not self._loss_told:
            from .setup import log

            self._loss_told = True
            log(f"loss: chunked, {self.loss_chunk_size} tokens a chunk" if not plain else
                "loss: plain, over the full logits (the chunked loss needs a plain linear output layer whose logits "
                "the model leaves as they are, and no label smoothing or loss function of the method's own)")
        if plain:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        with head_returns_hidden(head), warnings.catch_warnings():
            # FSDP2 warns that the "logits" (a slice of the hidden states) are a view: the loss never changes them in place
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            outputs = model(**inputs)
        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weight, bias = unsharded_head(model, head)  # whole under FSDP2 too
        loss = chunked_causal_lm_loss(
            hidden, weight, labels, bias=bias, num_items_in_batch=num_items_in_batch, chunk_size=self.loss_chunk_size,
            dtype=self._mixed_dtype(),
        )
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as the Trainer's own loss: a sum over every process's tokens
        return (loss, outputs) if return_outputs else loss

    def _mixed_dtype(self):
        """The compute dtype of bf16 mixed precision (None without it): the loss runs outside the
        model's autocast, and a trained output layer may hold float32 master weights."""
        import torch

        return torch.bfloat16 if self.args.bf16 else None

    def _sequence_parallel_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """The loss of this rank's slice of the group's row, scaled so that the backend's average of the
        gradients over every process is the gradient of the whole batch (``training.sequence_parallel``)."""
        import torch

        from .loss import IGNORE_INDEX, chunked_causal_lm_loss, head_returns_hidden, output_layer
        from .sequence_parallel import local_batch

        group = self.sequence_group
        local, targets, count = local_batch(inputs, group)
        given = num_items_in_batch is not None and self.model_accepts_loss_kwargs
        divisor = num_items_in_batch if given else max(count, 1)
        head = output_layer(model) if self.label_smoother is None and self.compute_loss_func is None else None
        if head is not None:
            with head_returns_hidden(head):
                outputs = model(**local)
            hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = chunked_causal_lm_loss(
                hidden, head.weight, targets, bias=head.bias, num_items_in_batch=divisor,
                chunk_size=self.loss_chunk_size or 2048, labels_shifted=True, dtype=self._mixed_dtype(),
            )
        else:
            outputs = model(**local)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten().to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum"
            ) / divisor
        # The gradients of a group's ranks add up to its row's; the backend averages over every process.
        averaged_globally = given and self.args.average_tokens_across_devices and self.args.world_size > 1
        loss = loss * (self.args.world_size if averaged_globally else group.size)
        return (loss, outputs) if return_outputs else loss

    def checkpoint_record(self) -> dict:
        """What ``tuneforge_checkpoint.json`` holds: the run, the step, and the layout that wrote it.

        A resume compares the layout with its own (``output.check_resume_layout``): the
        number of processes, the backend and the global batch it trained with.
        """
        args = self.args
        return {
            "run_id": self.run_id,
            "global_step": self.state.global_step,
            "world_size": args.world_size,
            "parallel_backend": self.parallel_backend,
            "per_device_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "sequence_parallel_size": self.sequence_group.size if self.sequence_group is not None else 1,
        }

    def _save_checkpoint(self, model, trial):
        # Every process writes its part of the checkpoint (its random state; under a sharding
        # backend, its share of the weights and optimizer state) into one staging dir, which
        # the main process empties first and renames once every process has written its part.
        run_dir = self._get_output_dir(trial=trial)
        staging_root = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = os.path.join(staging_root, name)
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # no process writes into what is being emptied
        self._get_output_dir = lambda trial=None: staging_root  # type: ignore[method-assign]
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()  # every part is written before the checkpoint gets its name
        if self.args.should_save:
            with open(os.path.join(staged, CHECKPOINT_RECORD), "w") as handle:
                json.dump(self.checkpoint_record(), handle)
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):  # the same step saved twice
                _set_aside(final, staging_root)
            os.replace(staged, final)
            self._rotate_checkpoints_aside(run_dir, staging_root)
            shutil.rmtree(staging_root, ignore_errors=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):  # those load their own state
            load_policy_adapter(model if model is not None else self.model, resume_from_checkpoint)

    def _rotate_checkpoints_aside(self, run_dir: str, staging_root: str) -> None:
        """Keep the newest ``save_total_limit`` checkpoints (and the best), as transformers does.

        A checkpoint to delete is first moved out of its name, whole: a run killed while
        deleting it leaves no ``checkpoint-N`` with half its files.
        """
        limit = self.args.save_total_limit
        if limit is None or limit <= 0:
            return
        found = checkpoints(run_dir)
        protected = {found[-1].name} if found else set()
        if self.state.best_model_checkpoint:
            protected.add(os.path.basename(self.state.best_model_checkpoint))
        remaining = len(found)
        for checkpoint in found:
            if remaining <= max(limit, len(protected)):
                break
            if checkpoint.name not in protected:
                _set_aside(str(checkpoint), staging_root)
                remaining -= 1


def _set_aside(path: str, staging_root: str) -> None:
    """Move a checkpoint out of the names a resume reads, at once; deleting ``staging_root`` then deletes it."""
    target = os.path.join(staging_root, "old", os.path.basename(path))
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target)
