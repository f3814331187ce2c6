"""The Ray Train edge: the core's training loop run data-parallel on a Ray cluster.

* ``trainer``    the typed config turned into a ``TorchTrainer`` whose workers run ``mlp.loop.fit``;
* ``run``        one training run as every command runs it (take the run, train, evaluate, write its files);
* ``allreduce``  gradients averaged through shared memory for CPU workers on one machine;
* ``recorder``   the Train controller's callback that writes each epoch to the run's files;
* ``runfiles``   the run's files on storage, and who owns a run (attempt tokens);
* ``rayenv``     the Ray settings the project chooses, applied where it starts a cluster;
* ``ray_compat`` every Ray private API or version workaround, behind one version check.
"""
