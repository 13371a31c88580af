# tools/compare_recipes.py, architectures under one recipe (docs/benchmark.md): BRIXEL as released.
_base_ = ['../../brixel_vits16.py']

demo = dict(label='BRIXEL (release arch.)', iters=300, batch_size=2)
