"""Preflight: prove, within seconds and before anything is written, that the cluster can run a request.

* ``capacity`` pure packing: can the workers or replicas ever fit the cluster's nodes (or its autoscaler's)?
* ``checks``   the probes: every node that will host work writes, reads and sees shared storage and the model.
"""
