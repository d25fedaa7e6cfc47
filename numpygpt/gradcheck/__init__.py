"""Gradient checks, for the tests and for your own experiments.

    check_gradients(f, params, grads)        per tensor, central differences (core.py)
    check_directional(f, params, grads)      whole model along random directions (core.py)
    check_model(model, ids, labels)          every parameter tensor of a float64 GPT
    check_layer("attention")                 one of numpygpt's layers (layers.py)
    check_pair(forward, backward, x, p)      any forward/backward pair that keeps the
                                             layer convention: your own layer (layers.py)
"""
from .core import (EPS, FLOOR, TOLERANCES, TensorCheck, DirectionCheck, check_gradients,
                   check_directional, numeric_gradient, relative_error, format_report)
from .layers import (LAYERS, CHECK_CONFIG, CHECK_EXECUTION, check_layer, check_pair, check_model,
                     layer_problem, unit_scale_params)
