"""What every layer may use and that imports nothing of the package: atomic writes and lock files,
(``filesystem``), the finite-value check (``checks``), the allocator setting of CPU runs (``allocator``),
where the packaged configs and tools are (``packaged``)."""
