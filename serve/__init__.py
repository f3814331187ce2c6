"""Ray Serve HTTP inference for promoted models.

``__main__`` is the command (``mlp serve``); ``deploy`` starts the application;
``app`` is the deployment; ``web``, ``inputs`` and ``images`` turn requests into model
inputs and errors; ``predictor`` loads and follows a registry version; ``options``
turns the config into Serve's options; ``endpoint`` and ``client`` talk to a running one;
``batch`` (``mlp predict``, in ``predict``) scores a table or a folder of images with Ray Data.
"""
