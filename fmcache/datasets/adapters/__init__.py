"""Built-in dataset adapters: each module reads one release and exports its entry as ``SPEC``."""
