"""mmengine registries of our own scope, so configs say ``type='DistillModel'`` with
``default_scope='brixel_plugins'``. Each is a child of mmengine's root registry of the same kind,
so mmengine's own types (Adam, ConstantLR, CheckpointHook, ...) resolve through it; every kind the
Runner builds has one, otherwise mmengine warns that the scope has no registry for it."""
from mmengine import registry as mme
from mmengine.logging import MessageHub
from mmengine.registry import DefaultScope, Registry

SCOPE = "brixel_plugins"
_LOC = ["brixel_plugins.distill"]


def _in_our_scope(build_func):
    """``build_func`` run with ``brixel_plugins`` as the default scope. mmengine resolves a build
    through the process-wide default scope, so after an mmseg Runner (scope ``mmseg``) in the same
    process a plain ``TRANSFORMS.build(dict(type='AntialiasedResize'))`` of ours would look in
    mmseg's registry; a scope prefix in ``type`` ('mmseg.X') still wins."""

    def build(cfg, *args, **kwargs):
        with DefaultScope.overwrite_default_scope(SCOPE):
            return build_func(cfg, *args, **kwargs)

    return build


def _runner_scope():
    """The default scope of the Runner running now (mmengine names a Runner's message hub and its default
    scope after the experiment), None outside a Runner."""
    name = MessageHub.get_current_instance().instance_name
    return DefaultScope.get_instance(name).scope_name if DefaultScope.check_instance_created(name) else None


class _ScopeRegistry(Registry):
    """In another scope's Runner, a name our scope does not register resolves in that Runner's scope
    first (then mmengine's, as usual): a config inheriting ``brixel_plugins::mmseg/...`` gets our scope
    on its mmseg types (mmengine scopes the dicts of a package's base config by the package's name),
    and mmseg's LoadAnnotations must win over mmcv's of the same name in mmengine's registry."""

    def get(self, key):
        outer = _runner_scope() if "." not in key else None
        if outer not in (None, SCOPE):
            self.import_from_location()
            other = self._get_root_registry()._search_child(outer)
            if key not in self.module_dict and other is not None:
                found = other.get(key)
                if found is not None:
                    return found
        return super().get(key)


def _child(parent: Registry) -> Registry:
    return _ScopeRegistry(parent.name, build_func=_in_our_scope(parent.build_func), parent=parent, scope=SCOPE,
                          locations=_LOC)


MODELS = _child(mme.MODELS)
DATASETS = _child(mme.DATASETS)
DATA_SAMPLERS = _child(mme.DATA_SAMPLERS)
TRANSFORMS = _child(mme.TRANSFORMS)
METRICS = _child(mme.METRICS)
EVALUATOR = _child(mme.EVALUATOR)
HOOKS = _child(mme.HOOKS)
LOOPS = _child(mme.LOOPS)
MODEL_WRAPPERS = _child(mme.MODEL_WRAPPERS)
RUNNERS = _child(mme.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mme.RUNNER_CONSTRUCTORS)
OPTIMIZERS = _child(mme.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mme.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mme.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mme.PARAM_SCHEDULERS)
VISUALIZERS = _child(mme.VISUALIZERS)
VISBACKENDS = _child(mme.VISBACKENDS)
LOG_PROCESSORS = _child(mme.LOG_PROCESSORS)
WEIGHT_INITIALIZERS = _child(mme.WEIGHT_INITIALIZERS)
FUNCTIONS = _child(mme.FUNCTIONS)
INFERENCERS = _child(mme.INFERENCERS)
