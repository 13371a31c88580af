"""Cost of a dense DINOv3 map: the backbone at high resolution vs low resolution + an upsampler.

The package, one module per job (the way mmengine's analysis package is split):

- :mod:`.timing`: the wall time of a call (the device synchronised around it)
- :mod:`.flops`: FLOP counting with ``torch.utils.flop_counter`` (conventions in its docstring)
- :mod:`.memory`: peak memory on CUDA and CPU
- :mod:`.runner`: measuring rows (``highres``, ``backbone`` alone, each method) and their ratios
- :mod:`.output`: CSV, Markdown table, sweep plot
- :mod:`.large_output`: peak memory beyond the output at a large output size
- :mod:`.report`: what ``tools/benchmark.py`` runs once its arguments are parsed

What a row measures (``--methods``: registry names with options, weight files) is parsed and
built by :mod:`brixel_plugins.files.method_spec`, as for the PCA picture.
``tools/benchmark.py`` is the command line; docs/benchmark.md has measured tables and how our
FLOP counts compare with the published ones.
"""
from .flops import EXTRA_FLOPS, FlopCount, count_flops
from .memory import PeakMemory, module_bytes
from .output import CSV_FIELDS, markdown_table, plot_sweep, write_csv
from .runner import (
    BACKBONE,
    DEFAULT_METHODS,
    REFERENCE,
    BenchConfig,
    add_ratios,
    build_backbone,
    configure_allocator,
    measure_backbone_row,
    measure_row,
    run_benchmark,
)
from .timing import timed

__all__ = ["configure_allocator", "EXTRA_FLOPS", "FlopCount", "count_flops", "PeakMemory", "module_bytes",
           "DEFAULT_METHODS", "CSV_FIELDS", "markdown_table", "plot_sweep", "write_csv", "BACKBONE", "REFERENCE",
           "BenchConfig", "add_ratios", "build_backbone", "measure_backbone_row", "measure_row", "run_benchmark",
           "timed"]
