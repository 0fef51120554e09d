"""`optiml plan`: memory per GPU and step time of every parallel layout of a recipe.

    params.py       exact parameter counts: the model's, one rank's
    activations.py  the bytes autograd saves per micro-batch and stage (measured in the tests)
    memory.py       every buffer a rank holds, by sharding mode and phase of a step
    step_time.py    FLOPs, communication and pipeline bubble -> seconds per step, MFU
    hardware.py     GPU and network table
    plan.py         one Plan per layout; cli.py prints them
"""

from optiml_engine.planner.cli import main
from optiml_engine.planner.params import model_params
from optiml_engine.planner.plan import layouts, plan_layout

__all__ = ["layouts", "main", "model_params", "plan_layout"]
