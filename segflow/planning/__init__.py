"""`segflow plan`: a dataset fingerprint and nnU-Net's planning rules, written out as a workflow.

fingerprint (per-case statistics, cached) -> spacing, topology, sizing, normalisation (the rules,
each with its reason) -> planner (one configuration: 3d_fullres or 2d) -> workflow (an ordinary,
editable segflow workflow). Imports no torch: planning runs on any machine in seconds.
"""
