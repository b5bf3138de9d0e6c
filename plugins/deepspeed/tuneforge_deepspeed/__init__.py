"""DeepSpeed ZeRO for tuneforge; the hooks are in ``tuneforge_deepspeed.plugin``.

Nothing here imports DeepSpeed: it is imported in the training processes, when the
backend builds their ``TrainingArguments``.
"""
