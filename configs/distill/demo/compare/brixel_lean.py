# tools/compare_recipes.py, architectures under one recipe (docs/benchmark.md): BRIXEL-lean.
_base_ = ['../../brixel_lean_vits16.py']

demo = dict(label='BRIXEL-lean', iters=300, batch_size=2)
