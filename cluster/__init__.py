"""The top layer: the ``mlp`` command, the one-command pipeline, presets, Serve config and manifests.

``cli`` is ``mlp`` (subcommands by name); ``pipeline`` is ``mlp pipeline``, chaining
the stages in ``stages``; ``verify`` checks a live endpoint against the promoted
model; ``pipeline_report`` writes the pipeline's report.
"""
