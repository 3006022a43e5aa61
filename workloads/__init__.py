"""soakd's pure compute side: phases, backends, timing and the worker. Never imports `daemon`."""
