"""Training: AdamW, the data, one step, one loop for pre-training and SFT, and checkpoints.

    step.py         one training step: forward, backward, clip, AdamW
    loop.py         the loop around it: evaluation, checkpoints, signals, progress
    optim.py        AdamW, gradient clipping, the learning-rate schedule
    settings.py     what a run is made of (TrainSettings), the PRETRAIN and SFT recipes
    data.py, sft.py the batches: text windows; prompt-masked SFT examples and the tasks
    checkpoint.py   checkpoints that survive a crash; resume.py: continuing a run from one
    signals.py      Ctrl-C and SIGTERM end a run between steps
    distributed.py  data-parallel training over MPI
"""
from .optim import AdamW, clip_grad_norm, global_grad_norm, lr_at
from .settings import TrainSettings, PRETRAIN, SFT, SFT_CLAIM, SFT_SEEDS
from .step import train_step
from .loop import train_loop
from .checkpoint import save_checkpoint, load_checkpoint
