"""Training: the tiny base model, SFT and DPO over TRL/PEFT, launching, checkpoints, tracking, memory."""
