"""The MLP and its platform on Ray.

The top level is the plain-PyTorch core (config, options, model, data, loop,
checkpoint, with console and procs as small plain helpers): none of it imports Ray.
The platform around it lives in subpackages named for their jobs: ``distributed``
(the Ray Train edge), ``registry`` (storage and the model registry), ``preflight`` and
``reports``. ``train`` is the ``mlp train`` command. See docs/architecture.md.
"""
