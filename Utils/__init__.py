"""The implementation below the entry points, one concern per folder:

* ``config/``    the frozen settings the flags become
* ``data/``      raw interaction logs into the dataset format
* ``kernels/``   propagation and the blocked all-node kernels
* ``objective/`` loss terms, the adaptive estimator, the pruning step
* ``training/``  the epoch loop, the three stages, metrics
* ``files/``     checkpoints, published-file import, resume, output protection
* ``tools/``     model tools: serving, report and compact export, plots, comparison
* ``runtime/``   device, threads, seeds, processes, user errors
"""
