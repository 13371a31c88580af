"""The command line's shared parts: console output and progress (``console``), argparse types
(``arguments``), the one error exit of every tool (``errors.run_tool``), picture lists of the inference
tools (``pictures``) and the ``brixel`` command (``commands``)."""
