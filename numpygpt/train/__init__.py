"""Training: AdamW, the data, one loop for pre-training and SFT, and checkpoints."""
from .optim import AdamW, clip_grad_norm, global_grad_norm, lr_at
from ..checks import NonFiniteError
from .loop import TrainSettings, PRETRAIN, SFT, train_loop
from .checkpoint import save_checkpoint, load_checkpoint
