"""mmengine registries of our own scope, so configs say ``type='DistillModel'`` with
``default_scope='brixel_plugins'`` (children of mmengine's roots: mmengine's own types still resolve)."""
from mmengine.registry import DATA_SAMPLERS as MME_DATA_SAMPLERS
from mmengine.registry import DATASETS as MME_DATASETS
from mmengine.registry import HOOKS as MME_HOOKS
from mmengine.registry import LOOPS as MME_LOOPS
from mmengine.registry import METRICS as MME_METRICS
from mmengine.registry import MODEL_WRAPPERS as MME_MODEL_WRAPPERS
from mmengine.registry import MODELS as MME_MODELS
from mmengine.registry import RUNNERS as MME_RUNNERS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MME_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

SCOPE = "brixel_plugins"
_LOC = ["brixel_plugins.distill"]

MODELS = Registry("model", parent=MME_MODELS, scope=SCOPE, locations=_LOC)
DATASETS = Registry("dataset", parent=MME_DATASETS, scope=SCOPE, locations=_LOC)
DATA_SAMPLERS = Registry("data sampler", parent=MME_DATA_SAMPLERS, scope=SCOPE, locations=_LOC)
METRICS = Registry("metric", parent=MME_METRICS, scope=SCOPE, locations=_LOC)
HOOKS = Registry("hook", parent=MME_HOOKS, scope=SCOPE, locations=_LOC)
LOOPS = Registry("loop", parent=MME_LOOPS, scope=SCOPE, locations=_LOC)
MODEL_WRAPPERS = Registry("model_wrapper", parent=MME_MODEL_WRAPPERS, scope=SCOPE, locations=_LOC)
RUNNERS = Registry("runner", parent=MME_RUNNERS, scope=SCOPE, locations=_LOC)
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor", parent=MME_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope=SCOPE, locations=_LOC)
