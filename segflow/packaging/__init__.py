"""Deliverable models: `segflow package` (a run directory made into a package) and `segflow predict`
(a package, run directory or checkpoint applied to a folder of images). Commands: like the CLI they
may use the node declarations (to rebuild a network from its config) and every implementation."""
