"""Gradient checks, for the tests and for your own experiments.

    check_gradients(f, params, grads)        per tensor, central differences (core.py)
    check_directional(f, params, grads)      whole model along random directions (core.py)
    check_model(model, ids, labels)          every parameter tensor of a float64 GPT
    check_layer("attention")                 one of numpygpt's layers (layers.py)
    check_pair(forward, backward, x, p)      any forward/backward pair that keeps the
                                             layer convention: your own layer (layers.py)

Experiments with the checks themselves:

    BUGS, run_bug(name), run_zoo()           the bug zoo: classic backprop, loss, label, mask and
    format_zoo(rows), swapped(...)           KV-cache bugs, which checks catch each and which
                                             miss it (bugs.py, loss_bugs.py, attention_bugs.py,
                                             zoo.py, problems.py, oracle.py)
    sweep_eps(), format_sweep, plot_sweep    relative error against the step eps, float64 and
                                             float32 (sweep.py)
"""
from .core import (EPS, FLOOR, TOLERANCES, TensorCheck, DirectionCheck, check_gradients,
                   check_directional, numeric_gradient, relative_error, format_report)
from .layers import (LAYERS, CHECK_CONFIG, CHECK_EXECUTION, check_layer, check_pair, check_model,
                     layer_problem, unit_scale_params)
from .problems import HOMES, PropertyResult, accumulate_grads
from .bugs import BUGS, CHECKS, Bug, swapped
from .zoo import (CheckResult, ZooRow, run_bug, run_checks, run_clean, run_zoo, format_zoo,
                  format_bug, headline)
from .oracle import torch_version
from .sweep import (EPS_GRID, Sweep, sweep_eps, format_sweep, plot_sweep, predicted_best_eps,
                    unit_roundoff)
