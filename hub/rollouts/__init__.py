"""Staged model rollouts: plans, health gates, the state machine in control.db, and its controller.

    RolloutPlan, Stage, Gates   what to roll out, in which steps, judged by which gates (plan.py)
    evaluate, GateResult        the gates as pure functions of device reports (gates.py)
    Rollouts, State             the state machine and its tables (machine.py)
    run_controller              the task that ticks it (controller.py)

Errors are RolloutError subclasses carrying the HTTP status the API answers with (errors.py).
"""

from .controller import ControllerStats, run_controller
from .errors import PlanError, RolloutError, RolloutStateError, UnknownRolloutError
from .gates import GateResult, evaluate, tv_distance
from .machine import Assignment, Rollouts, State, stage_sizes
from .plan import Gates, RolloutPlan, Stage, parse_stages

__all__ = [
    "Assignment", "ControllerStats", "GateResult", "Gates", "PlanError", "RolloutError", "RolloutPlan",
    "RolloutStateError", "Rollouts", "Stage", "State", "UnknownRolloutError", "evaluate", "parse_stages",
    "run_controller", "stage_sizes", "tv_distance",
]
