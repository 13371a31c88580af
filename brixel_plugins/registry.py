"""Where mmengine looks for the ``brixel_plugins`` scope's registries (it imports
``<default_scope>.registry`` whenever it builds in that scope, and warns if there is none).
Importing this module registers every distillation component; the registries themselves live
in :mod:`brixel_plugins.distill.registry`."""
from . import distill  # noqa: F401  (importing registers the components)
from .distill.registry import (  # noqa: F401
    DATA_SAMPLERS,
    DATASETS,
    EVALUATOR,
    FUNCTIONS,
    HOOKS,
    INFERENCERS,
    LOG_PROCESSORS,
    LOOPS,
    METRICS,
    MODEL_WRAPPERS,
    MODELS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    RUNNER_CONSTRUCTORS,
    RUNNERS,
    TRANSFORMS,
    VISBACKENDS,
    VISUALIZERS,
    WEIGHT_INITIALIZERS,
)
