"""Pipelines: a small durable DAG runner, and the condition model's retraining pipeline on it.

    Step, Pipeline, Schedule, StepContext   a pipeline's definition as value objects (dag.py)
    PipelineRunner                         runs and steps in control.db: start, run, resume,
                                           approve, reject, schedules (runner.py)
    Trigger, retrain_pipeline, start_retraining
                                           drift → dataset → train → evaluate → quantize →
                                           register → sign → (approval) → rollout (retrain.py)
    run_worker                             the hub's task: due schedules, pending runs (worker.py)

Errors are PipelineError subclasses carrying the HTTP status the API answers with (errors.py).
"""

from .dag import Pipeline, Schedule, Step, StepContext
from .errors import (
    PipelineDefinitionError,
    PipelineError,
    RunStateError,
    StepError,
    UnknownPipelineError,
    UnknownRunError,
)
from .retrain import RETRAIN, RetrainDeps, Trigger, retrain_params, retrain_pipeline, start_retraining
from .runner import RUN_STATES, STEP_STATES, PipelineRunner
from .worker import WorkerStats, run_worker

__all__ = [
    "RETRAIN", "RUN_STATES", "STEP_STATES", "Pipeline", "PipelineDefinitionError", "PipelineError",
    "PipelineRunner", "RetrainDeps", "RunStateError", "Schedule", "Step", "StepContext", "StepError", "Trigger",
    "UnknownPipelineError", "UnknownRunError", "WorkerStats", "retrain_params", "retrain_pipeline", "run_worker",
    "start_retraining",
]
